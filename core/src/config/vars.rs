//! Every environment variable the core reads, in one table: reading them
//! takes what a value must be from here (so an error says it), and the
//! README's check and `--help` output read it.

/// One environment variable: its name, its default as the README shows
/// it, what it does, and what a value must be (an error says that).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Var {
    /// The variable's name.
    pub name: &'static str,
    /// Its default, as the README shows it.
    pub default: &'static str,
    /// What it does.
    pub meaning: &'static str,
    /// What a value must be.
    pub expected: &'static str,
}

impl Var {
    /// A table entry.
    pub const fn new(
        name: &'static str,
        default: &'static str,
        meaning: &'static str,
        expected: &'static str,
    ) -> Self {
        Self {
            name,
            default,
            meaning,
            expected,
        }
    }
}

/// Every environment variable the core reads.
pub const ENV_VARS: &[Var] = &[
    Var::new(
        "SLUICEGATE_PREFETCH",
        "64",
        "messages the process holds at most (lanes + running + being settled); the broker prefetch. 1-65535",
        "a whole number from 1 to 65535",
    ),
    Var::new(
        "SLUICEGATE_MAX_IN_FLIGHT",
        "16",
        "handlers running at once. 1..=PREFETCH",
        "a whole number from 1 to 65535, at most SLUICEGATE_PREFETCH",
    ),
    Var::new(
        "SLUICEGATE_OVERFLOW",
        "block",
        "when the lanes are full: block | nack | delay (or defer) | drop | shed | early-drop",
        "one of block, nack, delay (or defer), drop, shed, early-drop",
    ),
    Var::new(
        "SLUICEGATE_SHED_ACTION",
        "delay",
        "with shed, early-drop or a max queue time: what happens to a shed message: requeue | delay | dead-letter | drop",
        "one of requeue, delay, dead-letter, drop",
    ),
    Var::new(
        "SLUICEGATE_MAX_QUEUE_TIME_MS",
        "0",
        "a message that waited longer in the worker is shed instead of handled (by the shed action); 0 = no limit",
        "a whole number of milliseconds",
    ),
    Var::new(
        "SLUICEGATE_OVERFLOW_DELAY_MS",
        "1000",
        "with overflow=delay: how long the broker holds an overflowing message back. >= 1",
        "a whole number of milliseconds",
    ),
    Var::new(
        "SLUICEGATE_RETRY_MAX",
        "5",
        "retries after the first attempt before dead-lettering. 0-1000",
        "a whole number from 0 to 1000",
    ),
    Var::new(
        "SLUICEGATE_RETRY_BASE_MS",
        "200",
        "first retry delay; doubles each retry. >= 1",
        "a whole number of milliseconds",
    ),
    Var::new(
        "SLUICEGATE_RETRY_MAX_MS",
        "60000",
        "longest retry delay. >= RETRY_BASE_MS",
        "a whole number of milliseconds",
    ),
    Var::new(
        "SLUICEGATE_RETRY_JITTER",
        "true",
        "add random jitter (up to one extra delay) to retries: true | false",
        "true or false",
    ),
    Var::new(
        "SLUICEGATE_UNSETTLEABLE",
        "dead-letter-truncated",
        "a message the broker refuses as a dead-letter (too large, queue full or gone): dead-letter-truncated (a cut copy, then drop) | drop",
        "one of dead-letter-truncated, drop",
    ),
    Var::new(
        "SLUICEGATE_UNSETTLEABLE_KEEP_BYTES",
        "65536",
        "with dead-letter-truncated: the most of the body the cut copy keeps. >= 0",
        "a whole number of bytes",
    ),
    Var::new(
        "SLUICEGATE_HANDLER_TIMEOUT_MS",
        "30000",
        "a handler running longer is cancelled and its message retried. >= 1",
        "a whole number of milliseconds",
    ),
    Var::new(
        "SLUICEGATE_PREFETCH_BYTES",
        "0",
        "the most payload bytes the worker holds, as well as SLUICEGATE_PREFETCH messages; it takes one only while one of SLUICEGATE_MAX_MESSAGE_BYTES fits. 0 = no byte limit",
        "a whole number of bytes: 0, or at least SLUICEGATE_MAX_MESSAGE_BYTES",
    ),
    Var::new(
        "SLUICEGATE_MAX_MESSAGE_BYTES",
        "4194304",
        "a larger payload is dead-lettered before decoding, with the reason. >= 1",
        "a whole number of bytes",
    ),
    Var::new(
        "SLUICEGATE_SHUTDOWN_GRACE_MS",
        "10000",
        "on shutdown, how long running handlers may finish before they are cancelled and requeued. >= 0",
        "a whole number of milliseconds",
    ),
    Var::new(
        "SLUICEGATE_LANE_WEIGHTS",
        "(strict)",
        "shares of handler starts per lane, highest priority first, e.g. 70,20,10; unset = strict priority",
        "whole numbers above 0, comma-separated, highest priority first (70,20,10)",
    ),
    Var::new(
        "SLUICEGATE_STARVATION_GUARD_MS",
        "0",
        "strict priority: a lower lane's message that waited this long goes before higher ones; 0 = off",
        "a whole number of milliseconds",
    ),
    Var::new(
        "SLUICEGATE_RESERVED_FOR_TOP",
        "0",
        "share (0 to 1) of the handlers only the top priority lane may use, so it never waits behind long low-priority runs",
        "a share from 0 to under 1 (0.2 = a fifth)",
    ),
    Var::new(
        "SLUICEGATE_ADAPTIVE",
        "off",
        "a latency-driven limit on handlers at once, which the broker prefetch follows: off | aimd | gradient",
        "off, aimd or gradient",
    ),
    Var::new(
        "SLUICEGATE_ADAPTIVE_TARGET_MS",
        "100",
        "with adaptive: the p99 handler time to stay under. >= 1",
        "a whole number of milliseconds",
    ),
    Var::new(
        "SLUICEGATE_ADAPTIVE_MIN",
        "1",
        "with adaptive: the fewest handlers at once. >= 1",
        "a whole number from 1 to 65535",
    ),
    Var::new(
        "SLUICEGATE_ADAPTIVE_MAX",
        "MAX_IN_FLIGHT",
        "with adaptive: the most handlers at once. MIN..=PREFETCH",
        "a whole number from 1 to 65535",
    ),
    Var::new(
        "SLUICEGATE_RATE_LIMIT",
        "0",
        "handler starts per second at most (a token bucket); 0 = no limit",
        "a whole number of handler starts per second (0 = no limit)",
    ),
    Var::new(
        "SLUICEGATE_BURST",
        "1",
        "with a rate limit: the most starts at once after a quiet spell. >= 1",
        "a whole number from 1",
    ),
    Var::new(
        "SLUICEGATE_LANE_RATE_LIMITS",
        "(none)",
        "per-lane rate limits, highest priority first, lanes past the list take the last: starts per second, optionally /burst, 0 = no limit (0,0,50/5)",
        "starts per second for each lane, highest priority first, comma-separated, each optionally /burst; 0 = no limit (0,0,50/5)",
    ),
    Var::new(
        "SLUICEGATE_BREAKER_FAILURES",
        "0",
        "circuit breaker: failures in a row that open it; 0 = off",
        "a whole number (0 = off)",
    ),
    Var::new(
        "SLUICEGATE_BATCH_MAX",
        "100",
        "batch handlers: the most messages in one batch. 1-65535",
        "a whole number from 1 to 65535",
    ),
    Var::new(
        "SLUICEGATE_BATCH_LINGER_MS",
        "50",
        "batch handlers: how long a batch waits to fill after its first message",
        "a whole number of milliseconds",
    ),
    Var::new(
        "SLUICEGATE_BATCH_BISECT",
        "false",
        "batch handlers: split a batch that fails as a whole down to the messages that fail alone",
        "true or false",
    ),
    Var::new(
        "SLUICEGATE_BREAKER_FAILURE_RATE",
        "(off)",
        "circuit breaker: also open when more than this share (0-1) of the last BREAKER_WINDOW results failed",
        "a share between 0 and 1, exclusive (0.5 = half)",
    ),
    Var::new(
        "SLUICEGATE_BREAKER_WINDOW",
        "20",
        "circuit breaker: results the failure rate is taken over. >= 1",
        "a whole number from 1",
    ),
    Var::new(
        "SLUICEGATE_BREAKER_COOLDOWN_MS",
        "5000",
        "circuit breaker: how long it stays open before probing. >= 1",
        "a whole number of milliseconds",
    ),
    Var::new(
        "SLUICEGATE_BREAKER_PROBES",
        "1",
        "circuit breaker: probes when half-open; all must succeed to close it. >= 1",
        "a whole number from 1",
    ),
];

/// `table`'s entry for `name` (a name the code reads: each crate's table
/// test checks each one is there).
pub fn lookup<'a>(table: &'a [Var], name: &str) -> &'a Var {
    const UNKNOWN: Var = Var::new("", "", "", "a value");
    table.iter().find(|v| v.name == name).unwrap_or(&UNKNOWN)
}

/// `name` holds `value`, which it may not: the error says what `table`
/// says a value must be.
pub fn invalid(table: &[Var], name: &str, value: impl std::fmt::Display) -> super::ConfigError {
    super::ConfigError::new(name, value, lookup(table, name).expected)
}

/// The core table's entry for `name`.
pub(crate) fn var(name: &str) -> &'static Var {
    lookup(ENV_VARS, name)
}

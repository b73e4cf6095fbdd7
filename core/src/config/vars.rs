//! Every environment variable the core reads, in one table: the README's
//! check and `--help` output read it.

/// Every environment variable the core reads, with its meaning, for
/// documentation and `--help` output.
pub const ENV_VARS: &[(&str, &str, &str)] = &[
    (
        "SLUICEGATE_PREFETCH",
        "64",
        "messages the process holds at most (lanes + running + being settled); the broker prefetch. 1-65535",
    ),
    (
        "SLUICEGATE_MAX_IN_FLIGHT",
        "16",
        "handlers running at once. 1..=PREFETCH",
    ),
    (
        "SLUICEGATE_OVERFLOW",
        "block",
        "when the lanes are full: block | nack | delay (or defer) | drop | shed | early-drop",
    ),
    (
        "SLUICEGATE_SHED_ACTION",
        "delay",
        "with shed, early-drop or a max queue time: what happens to a shed message: requeue | delay | dead-letter | drop",
    ),
    (
        "SLUICEGATE_MAX_QUEUE_TIME_MS",
        "0",
        "a message that waited longer in the worker is shed instead of handled (by the shed action); 0 = no limit",
    ),
    (
        "SLUICEGATE_OVERFLOW_DELAY_MS",
        "1000",
        "with overflow=delay: how long the broker holds an overflowing message back. >= 1",
    ),
    (
        "SLUICEGATE_RETRY_MAX",
        "5",
        "retries after the first attempt before dead-lettering. 0-1000",
    ),
    (
        "SLUICEGATE_RETRY_BASE_MS",
        "200",
        "first retry delay; doubles each retry. >= 1",
    ),
    (
        "SLUICEGATE_RETRY_MAX_MS",
        "60000",
        "longest retry delay. >= RETRY_BASE_MS",
    ),
    (
        "SLUICEGATE_RETRY_JITTER",
        "true",
        "add random jitter (up to one extra delay) to retries: true | false",
    ),
    (
        "SLUICEGATE_UNSETTLEABLE",
        "dead-letter-truncated",
        "a message the broker refuses as a dead-letter (too large, queue full or gone): dead-letter-truncated (a cut copy, then drop) | drop",
    ),
    (
        "SLUICEGATE_UNSETTLEABLE_KEEP_BYTES",
        "65536",
        "with dead-letter-truncated: the most of the body the cut copy keeps. >= 0",
    ),
    (
        "SLUICEGATE_HANDLER_TIMEOUT_MS",
        "30000",
        "a handler running longer is cancelled and its message retried. >= 1",
    ),
    (
        "SLUICEGATE_SHUTDOWN_GRACE_MS",
        "10000",
        "on shutdown, how long running handlers may finish before they are cancelled and requeued. >= 0",
    ),
    (
        "SLUICEGATE_LANE_WEIGHTS",
        "(strict)",
        "shares of handler starts per lane, highest priority first, e.g. 70,20,10; unset = strict priority",
    ),
    (
        "SLUICEGATE_STARVATION_GUARD_MS",
        "0",
        "strict priority: a lower lane's message that waited this long goes before higher ones; 0 = off",
    ),
    (
        "SLUICEGATE_RESERVED_FOR_TOP",
        "0",
        "share (0 to 1) of the handlers only the top priority lane may use, so it never waits behind long low-priority runs",
    ),
    (
        "SLUICEGATE_ADAPTIVE",
        "off",
        "a latency-driven limit on handlers at once, which the broker prefetch follows: off | aimd | gradient",
    ),
    (
        "SLUICEGATE_ADAPTIVE_TARGET_MS",
        "100",
        "with adaptive: the p99 handler time to stay under. >= 1",
    ),
    (
        "SLUICEGATE_ADAPTIVE_MIN",
        "1",
        "with adaptive: the fewest handlers at once. >= 1",
    ),
    (
        "SLUICEGATE_ADAPTIVE_MAX",
        "MAX_IN_FLIGHT",
        "with adaptive: the most handlers at once. MIN..=PREFETCH",
    ),
    (
        "SLUICEGATE_RATE_LIMIT",
        "0",
        "handler starts per second at most (a token bucket); 0 = no limit",
    ),
    (
        "SLUICEGATE_BURST",
        "1",
        "with a rate limit: the most starts at once after a quiet spell. >= 1",
    ),
    (
        "SLUICEGATE_LANE_RATE_LIMITS",
        "(none)",
        "per-lane rate limits, highest priority first, lanes past the list take the last: starts per second, optionally /burst, 0 = no limit (0,0,50/5)",
    ),
    (
        "SLUICEGATE_BREAKER_FAILURES",
        "0",
        "circuit breaker: failures in a row that open it; 0 = off",
    ),
    (
        "SLUICEGATE_BREAKER_FAILURE_RATE",
        "(off)",
        "circuit breaker: also open when more than this share (0-1) of the last BREAKER_WINDOW results failed",
    ),
    (
        "SLUICEGATE_BREAKER_WINDOW",
        "20",
        "circuit breaker: results the failure rate is taken over. >= 1",
    ),
    (
        "SLUICEGATE_BREAKER_COOLDOWN_MS",
        "5000",
        "circuit breaker: how long it stays open before probing. >= 1",
    ),
    (
        "SLUICEGATE_BREAKER_PROBES",
        "1",
        "circuit breaker: probes when half-open; all must succeed to close it. >= 1",
    ),
];

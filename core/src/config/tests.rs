//! The configuration's environment, defaults and checks.
use super::*;
use std::collections::HashMap;

fn from(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::default().with_env_in(&Env::from_pairs(map))
}

#[test]
fn environment_overrides_defaults() {
    let c = from(&[
        ("SLUICEGATE_PREFETCH", "200"),
        ("SLUICEGATE_MAX_IN_FLIGHT", "50"),
        ("SLUICEGATE_OVERFLOW", "Drop"),
        ("SLUICEGATE_RETRY_MAX", "2"),
        ("SLUICEGATE_RETRY_BASE_MS", "10"),
        ("SLUICEGATE_RETRY_MAX_MS", "80"),
        ("SLUICEGATE_RETRY_JITTER", "false"),
        ("SLUICEGATE_HANDLER_TIMEOUT_MS", "1500"),
        ("SLUICEGATE_SHUTDOWN_GRACE_MS", "0"),
        ("SLUICEGATE_OVERFLOW_DELAY_MS", "250"),
        ("SLUICEGATE_MAX_MESSAGE_BYTES", "1048576"),
    ])
    .unwrap();
    assert_eq!(c.max_message_bytes_limit(), 1 << 20);
    assert_eq!(c.prefetch_limit(), 200);
    assert_eq!(c.max_in_flight_limit(), 50);
    assert_eq!(c.overflow_policy(), Overflow::Drop);
    assert_eq!(
        c.retry_policy(),
        &RetryPolicy::new(2, Duration::from_millis(10), Duration::from_millis(80)).without_jitter()
    );
    assert_eq!(c.handler_timeout_duration(), Duration::from_millis(1500));
    assert_eq!(c.shutdown_grace_duration(), Duration::ZERO);
    assert_eq!(c.overflow_delay_duration(), Duration::from_millis(250));
    assert_eq!(c.intake_reserve(), 25);
}

#[test]
fn bad_values_name_the_variable_the_value_and_what_is_allowed() {
    // (variables set, variable blamed, value quoted, part of what is allowed)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str, &'a str);
    let cases: &[Case<'_>] = &[
        (
            &[("SLUICEGATE_PREFETCH", "abc")],
            "SLUICEGATE_PREFETCH",
            "abc",
            "1 to 65535",
        ),
        (
            &[("SLUICEGATE_PREFETCH", "0")],
            "SLUICEGATE_PREFETCH",
            "0",
            "1 to 65535",
        ),
        (
            &[("SLUICEGATE_PREFETCH", "-5")],
            "SLUICEGATE_PREFETCH",
            "-5",
            "1 to 65535",
        ),
        (
            &[("SLUICEGATE_PREFETCH", "70000")],
            "SLUICEGATE_PREFETCH",
            "70000",
            "1 to 65535",
        ),
        (
            &[
                ("SLUICEGATE_PREFETCH", "10"),
                ("SLUICEGATE_MAX_IN_FLIGHT", "11"),
            ],
            "SLUICEGATE_MAX_IN_FLIGHT",
            "11",
            "SLUICEGATE_PREFETCH (10)",
        ),
        (
            &[("SLUICEGATE_LANE_RATE_LIMITS", "0,fast")],
            "SLUICEGATE_LANE_RATE_LIMITS",
            "0,fast",
            "0,0,50/5",
        ),
        (
            &[("SLUICEGATE_LANE_RATE_LIMITS", "0/5")],
            "SLUICEGATE_LANE_RATE_LIMITS",
            "0/5",
            "0 = no limit",
        ),
        (
            &[("SLUICEGATE_LANE_RATE_LIMITS", "50/0")],
            "SLUICEGATE_LANE_RATE_LIMITS",
            "50/0",
            "optionally /burst",
        ),
        (
            &[("SLUICEGATE_SHED_ACTION", "burn")],
            "SLUICEGATE_SHED_ACTION",
            "burn",
            "requeue, delay, dead-letter, drop",
        ),
        (
            &[("SLUICEGATE_OVERFLOW", "explode")],
            "SLUICEGATE_OVERFLOW",
            "explode",
            "block, nack, delay (or defer), drop, shed",
        ),
        (
            &[("SLUICEGATE_RETRY_BASE_MS", "1.5")],
            "SLUICEGATE_RETRY_BASE_MS",
            "1.5",
            "milliseconds",
        ),
        (
            &[
                ("SLUICEGATE_RETRY_BASE_MS", "500"),
                ("SLUICEGATE_RETRY_MAX_MS", "100"),
            ],
            "SLUICEGATE_RETRY_MAX_MS",
            "100",
            "SLUICEGATE_RETRY_BASE_MS (500)",
        ),
        (
            &[("SLUICEGATE_RETRY_JITTER", "maybe")],
            "SLUICEGATE_RETRY_JITTER",
            "maybe",
            "true or false",
        ),
        (
            &[("SLUICEGATE_MAX_MESSAGE_BYTES", "0")],
            "SLUICEGATE_MAX_MESSAGE_BYTES",
            "0",
            "at least 1",
        ),
        (
            &[("SLUICEGATE_MAX_MESSAGE_BYTES", "4MiB")],
            "SLUICEGATE_MAX_MESSAGE_BYTES",
            "4MiB",
            "a whole number of bytes",
        ),
        (
            &[("SLUICEGATE_HANDLER_TIMEOUT_MS", "0")],
            "SLUICEGATE_HANDLER_TIMEOUT_MS",
            "0",
            "at least 1",
        ),
        (
            &[
                ("SLUICEGATE_PREFETCH", "1"),
                ("SLUICEGATE_MAX_IN_FLIGHT", "1"),
                ("SLUICEGATE_OVERFLOW", "drop"),
            ],
            "SLUICEGATE_PREFETCH",
            "1",
            "at least 2",
        ),
    ];
    for (vars, variable, value, expected) in cases {
        let err = from(vars).expect_err(&format!("{vars:?} should be refused"));
        assert_eq!(err.variable, *variable, "{vars:?}");
        assert_eq!(err.value, *value, "{vars:?}");
        assert!(err.expected.contains(expected), "{vars:?}: {err}");
        let text = err.to_string();
        assert!(text.contains(variable) && text.contains(value), "{text}");
    }
}

#[test]
fn lane_rate_limits_read_rates_bursts_and_zeros() {
    let c = from(&[("SLUICEGATE_LANE_RATE_LIMITS", "0, 200/20 ,50")]).unwrap();
    assert_eq!(
        c.lane_rate_limits_policy(),
        [
            None,
            RateLimit::per_second(200).and_then(|l| l.burst(20)),
            RateLimit::per_second(50)
        ]
    );
}

#[test]
fn the_env_table_lists_every_variable_read_and_each_is_read_through_it() {
    let source = include_str!("env.rs");
    let read: std::collections::BTreeSet<&str> = source
        .match_indices("var(\"")
        .map(|(at, _)| {
            let rest = &source[at + 5..];
            &rest[..rest.find('"').unwrap_or(0)]
        })
        .collect();
    let table: std::collections::BTreeSet<&str> = ENV_VARS.iter().map(|v| v.name).collect();
    assert_eq!(read, table, "read and documented differ");
    assert!(ENV_VARS.iter().all(|v| !v.expected.is_empty()));
}

#[test]
fn the_tables_choices_are_the_parsers() {
    let expected = |name: &str| ENV_VARS.iter().find(|v| v.name == name).map(|v| v.expected);
    assert_eq!(
        expected("SLUICEGATE_OVERFLOW"),
        Some(format!("one of {}", Overflow::NAMES).as_str())
    );
    assert_eq!(
        expected("SLUICEGATE_SHED_ACTION"),
        Some(format!("one of {}", ShedAction::NAMES).as_str())
    );
    assert_eq!(
        expected("SLUICEGATE_UNSETTLEABLE"),
        Some(format!("one of {}", crate::Unsettleable::NAMES).as_str())
    );
}

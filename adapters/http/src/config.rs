//! Where the operations endpoint listens and when a worker stops being
//! ready, from code or `SLUICEGATE_*` environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use sluicegate::ConfigError;
use sluicegate::config::{Env, Var};
use sluicegate::ops::{ReadinessPolicy, ScalePolicy};

/// The environment variables this crate reads.
pub const ENV_VARS: &[Var] = &[
    Var::new(
        "SLUICEGATE_METRICS_ADDR",
        "127.0.0.1:9464",
        "where /metrics, /healthz, /readyz and /scale listen; off: not at all",
        "an address and port such as 0.0.0.0:9464, or off",
    ),
    Var::new(
        "SLUICEGATE_READY_SATURATION",
        "0.8",
        "held at or above this share of the prefetch is saturated",
        "a number above 0 and at most 1",
    ),
    Var::new(
        "SLUICEGATE_READY_SATURATED_MS",
        "10000",
        "saturated this long without a break makes /readyz answer 503",
        "a whole number of milliseconds",
    ),
    Var::new(
        "SLUICEGATE_SCALE_DRAIN_TARGET_MS",
        "60000",
        "the backlog should drain within this long: desired workers grow to make it so",
        "a whole number of milliseconds above 0",
    ),
    Var::new(
        "SLUICEGATE_SCALE_WINDOW_MS",
        "30000",
        "rates for the scale signals are measured over this long",
        "a whole number of milliseconds above 0",
    ),
    Var::new(
        "SLUICEGATE_CONSOLE_TOKEN",
        "(none: the status page is read-only)",
        "the token the status page's redrive asks for (Authorization: Bearer)",
        "at least 12 characters",
    ),
];

/// A secret that never shows in a log or a `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The shortest token taken: shorter ones are guessed.
    pub const MIN_LEN: usize = 12;

    /// `secret`, if it is long enough.
    pub fn new(secret: impl Into<String>) -> Option<Self> {
        let secret = secret.into();
        (secret.chars().count() >= Self::MIN_LEN).then_some(Self(secret))
    }

    /// Whether `offered` is this token, compared in constant time.
    pub fn matches(&self, offered: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == offered.len() && bool::from(self.0.as_bytes().ct_eq(offered.as_bytes()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// The operations endpoint's settings.
///
/// ```
/// use sluicegate_http::OpsConfig;
/// let config = OpsConfig::default();
/// assert_eq!(config.addr().map(|a| a.port()), Some(9464));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct OpsConfig {
    addr: Option<SocketAddr>,
    readiness: ReadinessPolicy,
    scale: ScalePolicy,
    token: Option<Token>,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            addr: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            readiness: ReadinessPolicy::default(),
            scale: ScalePolicy::default(),
            token: None,
        }
    }
}

impl OpsConfig {
    /// Listen on `addr` (`None`: serve nothing).
    pub fn addr_at(mut self, addr: Option<SocketAddr>) -> Self {
        self.addr = addr;
        self
    }

    /// When the worker stops being ready.
    pub fn readiness(mut self, policy: ReadinessPolicy) -> Self {
        self.readiness = policy;
        self
    }

    /// What the scale signals aim for.
    pub fn scale(mut self, policy: ScalePolicy) -> Self {
        self.scale = policy;
        self
    }

    /// The status page's redrive asks for `token` (`None`: the page is
    /// read-only).
    pub fn console_token(mut self, token: Option<Token>) -> Self {
        self.token = token;
        self
    }

    /// The token the status page's redrive asks for, if any.
    pub fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    /// Where it listens, if anywhere.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The readiness policy.
    pub fn readiness_policy(&self) -> ReadinessPolicy {
        self.readiness
    }

    /// The scale policy.
    pub fn scale_policy(&self) -> ScalePolicy {
        self.scale
    }

    /// Defaults overridden by the variables in [`ENV_VARS`].
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_in(&Env::process())
    }

    /// Like [`OpsConfig::from_env`], reading the variables in `env`.
    pub fn from_env_in(env: &Env) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        if let Some(raw) = env.get("SLUICEGATE_METRICS_ADDR").map(str::trim) {
            config.addr = match raw {
                "off" => None,
                _ => Some(
                    raw.parse()
                        .map_err(|_| invalid("SLUICEGATE_METRICS_ADDR", raw))?,
                ),
            };
        }
        if let Some(v) = env.read::<f64>(var("SLUICEGATE_READY_SATURATION"))? {
            if !(v > 0.0 && v <= 1.0) {
                return Err(invalid("SLUICEGATE_READY_SATURATION", v));
            }
            config.readiness.saturation = v;
        }
        if let Some(v) = env.read_millis(var("SLUICEGATE_READY_SATURATED_MS"))? {
            config.readiness.saturated_for = v;
        }
        config.scale.drain_target =
            positive(env, "SLUICEGATE_SCALE_DRAIN_TARGET_MS")?.unwrap_or(config.scale.drain_target);
        config.scale.window =
            positive(env, "SLUICEGATE_SCALE_WINDOW_MS")?.unwrap_or(config.scale.window);
        if let Some(raw) = env.get("SLUICEGATE_CONSOLE_TOKEN") {
            let token = Token::new(raw.trim())
                .ok_or_else(|| invalid("SLUICEGATE_CONSOLE_TOKEN", "(not shown)"))?;
            config.token = Some(token);
        }
        Ok(config)
    }
}

fn positive(env: &Env, name: &str) -> Result<Option<Duration>, ConfigError> {
    match env.read_millis(var(name))? {
        Some(d) if d.is_zero() => Err(invalid(name, 0)),
        other => Ok(other),
    }
}

fn var(name: &str) -> &'static Var {
    sluicegate::config::lookup(ENV_VARS, name)
}

/// `name` holds `value`, which it may not: the error says what the table
/// says a value must be.
fn invalid(name: &str, value: impl std::fmt::Display) -> ConfigError {
    sluicegate::config::invalid(ENV_VARS, name, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<OpsConfig, ConfigError> {
        OpsConfig::from_env_in(&Env::from_pairs(vars.iter().copied()))
    }

    #[test]
    fn off_serves_nothing_and_an_address_is_taken_as_given() {
        assert_eq!(
            from(&[("SLUICEGATE_METRICS_ADDR", "off")]).map(|c| c.addr()),
            Ok(None)
        );
        let at = from(&[("SLUICEGATE_METRICS_ADDR", "0.0.0.0:9000")]).map(|c| c.addr());
        assert_eq!(at, Ok(Some(SocketAddr::from(([0, 0, 0, 0], 9000)))));
    }

    #[test]
    fn bad_values_name_the_variable_and_what_it_must_be() {
        let e = from(&[("SLUICEGATE_METRICS_ADDR", "localhost")])
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(
            e.contains("SLUICEGATE_METRICS_ADDR")
                && e.contains("localhost")
                && e.contains("or off"),
            "{e}"
        );
        for (name, value) in [
            ("SLUICEGATE_READY_SATURATION", "1.5"),
            ("SLUICEGATE_READY_SATURATION", "0"),
            ("SLUICEGATE_READY_SATURATION", "most"),
            ("SLUICEGATE_READY_SATURATED_MS", "-1"),
            ("SLUICEGATE_SCALE_DRAIN_TARGET_MS", "0"),
            ("SLUICEGATE_SCALE_WINDOW_MS", "soon"),
        ] {
            let e = from(&[(name, value)])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(name) && e.contains(value), "{name}={value}: {e}");
        }
    }

    #[test]
    fn a_short_console_token_is_refused_without_showing_it() {
        let e = from(&[("SLUICEGATE_CONSOLE_TOKEN", "hunter2")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("SLUICEGATE_CONSOLE_TOKEN")
                && e.contains("at least 12")
                && !e.contains("hunter2"),
            "{e}"
        );
        assert_eq!(
            format!("{:?}", Token::new("0123456789abc")),
            "Some(Token(***))"
        );
    }

    #[test]
    fn the_table_lists_every_variable_read() {
        let config = from(&[
            ("SLUICEGATE_READY_SATURATION", "0.5"),
            ("SLUICEGATE_READY_SATURATED_MS", "2000"),
            ("SLUICEGATE_SCALE_DRAIN_TARGET_MS", "30000"),
            ("SLUICEGATE_SCALE_WINDOW_MS", "10000"),
            ("SLUICEGATE_CONSOLE_TOKEN", "a-long-enough-secret"),
        ]);
        let config = config.unwrap_or_default();
        assert_eq!(config.readiness_policy().saturation, 0.5);
        assert_eq!(
            config.readiness_policy().saturated_for,
            Duration::from_secs(2)
        );
        assert_eq!(config.scale_policy().drain_target, Duration::from_secs(30));
        assert_eq!(config.scale_policy().window, Duration::from_secs(10));
        let token = config.token().map(|t| t.matches("a-long-enough-secret"));
        assert_eq!(token, Some(true));
        assert_eq!(ENV_VARS.len(), 6);
    }
}

//! What admission turns away, from code or `SLUICEGATE_ADMIT_*`
//! variables.

use std::num::NonZeroU32;

use axum::http::{HeaderName, Uri};
use sluicegate::ConfigError;
use sluicegate::config::{Env, Var, invalid, lookup};

use super::{ClientKey, ClientRate};

/// The variables admission reads.
pub const ADMISSION_VARS: &[Var] = &[
    Var::new(
        "SLUICEGATE_ADMIT_BACKLOG_MAX",
        "10000",
        "the consumers' backlog at which requests get 503 with Retry-After; 0 = none",
        "a whole number",
    ),
    Var::new(
        "SLUICEGATE_ADMIT_CLIENT_RATE",
        "0",
        "requests a second each client may make before it gets 429; 0 = no limit",
        "a whole number",
    ),
    Var::new(
        "SLUICEGATE_ADMIT_CLIENT_BURST",
        "the rate",
        "requests a client may make at once after a quiet spell",
        "a whole number above 0",
    ),
    Var::new(
        "SLUICEGATE_ADMIT_CLIENT_KEY",
        "peer",
        "what tells clients apart: peer (the address) or header:NAME (the peer when absent)",
        "peer, or header: and a header name",
    ),
    Var::new(
        "SLUICEGATE_ADMIT_WORKERS",
        "(none)",
        "workers' /scale URLs (comma-separated, http://) to read the backlog from",
        "comma-separated http:// URLs",
    ),
];

/// Admission's settings.
///
/// ```
/// use sluicegate_http::admission::AdmissionConfig;
/// let config = AdmissionConfig::default();
/// assert_eq!(config.backlog_max, Some(10_000));
/// assert_eq!(config.client_rate, None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdmissionConfig {
    /// The backlog at which requests are turned away; `None`: never for
    /// the backlog.
    pub backlog_max: Option<u64>,
    /// Each client's rate; `None`: no per-client limit.
    pub client_rate: Option<ClientRate>,
    /// What tells clients apart.
    pub client_key: ClientKey,
    /// Workers' `/scale` URLs to read the backlog from, when no other
    /// [`super::Backlog`] is given.
    pub workers: Vec<Uri>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            backlog_max: Some(10_000),
            client_rate: None,
            client_key: ClientKey::Peer,
            workers: Vec::new(),
        }
    }
}

impl AdmissionConfig {
    /// Defaults overridden by the variables in [`ADMISSION_VARS`].
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_in(&Env::process())
    }

    /// Like [`AdmissionConfig::from_env`], reading the variables in `env`.
    pub fn from_env_in(env: &Env) -> Result<Self, ConfigError> {
        let var = |name| lookup(ADMISSION_VARS, name);
        let bad = |name, value: &str| invalid(ADMISSION_VARS, name, value);
        let mut config = Self::default();
        if let Some(max) = env.read::<u64>(var("SLUICEGATE_ADMIT_BACKLOG_MAX"))? {
            config.backlog_max = (max > 0).then_some(max);
        }
        let rate = env.read::<u32>(var("SLUICEGATE_ADMIT_CLIENT_RATE"))?;
        let burst = env.read::<u32>(var("SLUICEGATE_ADMIT_CLIENT_BURST"))?;
        if let Some(per_second) = rate.and_then(NonZeroU32::new) {
            let burst = match burst {
                None => per_second,
                Some(n) => {
                    NonZeroU32::new(n).ok_or_else(|| bad("SLUICEGATE_ADMIT_CLIENT_BURST", "0"))?
                }
            };
            config.client_rate = Some(ClientRate { per_second, burst });
        }
        if let Some(raw) = env.get("SLUICEGATE_ADMIT_CLIENT_KEY").map(str::trim) {
            config.client_key = match raw.strip_prefix("header:") {
                _ if raw == "peer" => ClientKey::Peer,
                Some(name) => ClientKey::Header(
                    HeaderName::try_from(name.trim())
                        .map_err(|_| bad("SLUICEGATE_ADMIT_CLIENT_KEY", raw))?,
                ),
                None => return Err(bad("SLUICEGATE_ADMIT_CLIENT_KEY", raw)),
            };
        }
        if let Some(raw) = env.get("SLUICEGATE_ADMIT_WORKERS") {
            config.workers = raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|url| match url.parse::<Uri>() {
                    Ok(uri) if uri.scheme_str() == Some("http") => Ok(uri),
                    _ => Err(bad("SLUICEGATE_ADMIT_WORKERS", url)),
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<AdmissionConfig, ConfigError> {
        AdmissionConfig::from_env_in(&Env::from_pairs(vars.iter().copied()))
    }

    #[test]
    fn bad_values_name_the_variable_and_the_value() {
        for (name, value) in [
            ("SLUICEGATE_ADMIT_BACKLOG_MAX", "lots"),
            ("SLUICEGATE_ADMIT_CLIENT_RATE", "-3"),
            ("SLUICEGATE_ADMIT_CLIENT_KEY", "cookie"),
            ("SLUICEGATE_ADMIT_CLIENT_KEY", "header:bad header"),
            ("SLUICEGATE_ADMIT_WORKERS", "https://w1:9464/scale"),
        ] {
            let e = from(&[(name, value)])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(name) && e.contains(value), "{name}={value}: {e}");
        }
        let zero_burst = from(&[
            ("SLUICEGATE_ADMIT_CLIENT_RATE", "5"),
            ("SLUICEGATE_ADMIT_CLIENT_BURST", "0"),
        ]);
        assert!(zero_burst.is_err());
    }

    #[test]
    fn every_variable_is_read_as_documented() {
        let config = from(&[
            ("SLUICEGATE_ADMIT_BACKLOG_MAX", "0"),
            ("SLUICEGATE_ADMIT_CLIENT_RATE", "50"),
            ("SLUICEGATE_ADMIT_CLIENT_KEY", "header:X-Client-Id"),
            (
                "SLUICEGATE_ADMIT_WORKERS",
                "http://w1:9464/scale, http://w2:9464/scale",
            ),
        ])
        .unwrap_or_default();
        assert_eq!(config.backlog_max, None, "0: no backlog limit");
        let rate = config
            .client_rate
            .map(|r| (r.per_second.get(), r.burst.get()));
        assert_eq!(rate, Some((50, 50)), "the burst defaults to the rate");
        assert_eq!(
            config.client_key,
            ClientKey::Header(HeaderName::from_static("x-client-id"))
        );
        assert_eq!(config.workers.len(), 2);
        assert_eq!(ADMISSION_VARS.len(), 5);
    }
}

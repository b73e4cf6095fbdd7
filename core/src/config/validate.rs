//! Checking the settings together, before a worker starts: each error
//! names the variable (or builder setting), its value and what is allowed.

use super::{Config, ConfigError, Overflow};

impl Config {
    /// Checks the settings together; [`crate::Worker`] calls this before
    /// it starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_bounds()?;
        self.validate_retry()?;
        self.validate_lanes()?;
        self.validate_adaptive()?;
        self.validate_breaker()
    }

    /// The prefetch, the handlers at once, and what overflow needs.
    fn validate_bounds(&self) -> Result<(), ConfigError> {
        if self.prefetch == 0 {
            return Err(ConfigError::new(
                "SLUICEGATE_PREFETCH",
                self.prefetch,
                "a whole number from 1 to 65535",
            ));
        }
        if self.max_in_flight == 0 || self.max_in_flight > self.prefetch {
            return Err(ConfigError::new(
                "SLUICEGATE_MAX_IN_FLIGHT",
                self.max_in_flight,
                format!(
                    "a whole number from 1 to SLUICEGATE_PREFETCH ({})",
                    self.prefetch
                ),
            ));
        }
        if self.overflow != Overflow::Block && self.prefetch < 2 {
            return Err(ConfigError::new(
                "SLUICEGATE_PREFETCH",
                self.prefetch,
                format!(
                    "at least 2 with SLUICEGATE_OVERFLOW={} (part of the prefetch is kept to see and settle overflowing messages)",
                    self.overflow
                ),
            ));
        }
        if self.batch.max() == 0 {
            return Err(ConfigError::new(
                "SLUICEGATE_BATCH_MAX",
                0,
                "a whole number from 1 to 65535",
            ));
        }
        if self.overflow_delay.is_zero() {
            return Err(ConfigError::new(
                "SLUICEGATE_OVERFLOW_DELAY_MS",
                0,
                "at least 1",
            ));
        }
        Ok(())
    }

    /// Retries and the handler timeout.
    fn validate_retry(&self) -> Result<(), ConfigError> {
        if self.retry.max_retries() > 1000 {
            return Err(ConfigError::new(
                "SLUICEGATE_RETRY_MAX",
                self.retry.max_retries(),
                "a whole number from 0 to 1000",
            ));
        }
        if self.retry.base().is_zero() {
            return Err(ConfigError::new(
                "SLUICEGATE_RETRY_BASE_MS",
                0,
                "at least 1",
            ));
        }
        if self.retry.max() < self.retry.base() {
            return Err(ConfigError::new(
                "SLUICEGATE_RETRY_MAX_MS",
                self.retry.max().as_millis(),
                format!(
                    "at least SLUICEGATE_RETRY_BASE_MS ({})",
                    self.retry.base().as_millis()
                ),
            ));
        }
        if self.max_message_bytes == 0 {
            return Err(ConfigError::new(
                "SLUICEGATE_MAX_MESSAGE_BYTES",
                0,
                "at least 1",
            ));
        }
        if self.prefetch_bytes > 0 && self.prefetch_bytes < self.max_message_bytes {
            return Err(ConfigError::new(
                "SLUICEGATE_PREFETCH_BYTES",
                self.prefetch_bytes,
                format!(
                    "0 (no byte limit) or at least SLUICEGATE_MAX_MESSAGE_BYTES ({}): the worker keeps room for one message of the largest size",
                    self.max_message_bytes
                ),
            ));
        }
        if self.handler_timeout.is_zero() {
            return Err(ConfigError::new(
                "SLUICEGATE_HANDLER_TIMEOUT_MS",
                0,
                "at least 1",
            ));
        }
        Ok(())
    }

    fn validate_lanes(&self) -> Result<(), ConfigError> {
        if let Some(weights) = &self.lane_weights {
            if weights.contains(&0) {
                return Err(ConfigError::new(
                    "SLUICEGATE_LANE_WEIGHTS",
                    format!("{weights:?}"),
                    "whole numbers above 0",
                ));
            }
        }
        Ok(())
    }

    fn validate_adaptive(&self) -> Result<(), ConfigError> {
        let Some(adaptive) = &self.adaptive else {
            return Ok(());
        };
        if adaptive.target().is_zero() {
            return Err(ConfigError::new(
                "SLUICEGATE_ADAPTIVE_TARGET_MS",
                0,
                "at least 1",
            ));
        }
        if adaptive.min() == 0 || adaptive.min() > adaptive.max() {
            return Err(ConfigError::new(
                "SLUICEGATE_ADAPTIVE_MIN",
                adaptive.min(),
                format!(
                    "a whole number from 1 to SLUICEGATE_ADAPTIVE_MAX ({})",
                    adaptive.max()
                ),
            ));
        }
        if adaptive.max() > self.prefetch {
            return Err(ConfigError::new(
                "SLUICEGATE_ADAPTIVE_MAX",
                adaptive.max(),
                format!("at most SLUICEGATE_PREFETCH ({})", self.prefetch),
            ));
        }
        Ok(())
    }

    fn validate_breaker(&self) -> Result<(), ConfigError> {
        let Some(breaker) = &self.breaker else {
            return Ok(());
        };
        if breaker.cool_down_duration().is_zero() {
            return Err(ConfigError::new(
                "SLUICEGATE_BREAKER_COOLDOWN_MS",
                0,
                "at least 1",
            ));
        }
        if breaker.probe_count() == 0 {
            return Err(ConfigError::new(
                "SLUICEGATE_BREAKER_PROBES",
                0,
                "at least 1",
            ));
        }
        if let Some((rate, window)) = breaker.failure_rate_window() {
            if !(rate > 0.0 && rate < 1.0) {
                return Err(ConfigError::new(
                    "SLUICEGATE_BREAKER_FAILURE_RATE",
                    rate,
                    "a share between 0 and 1, exclusive",
                ));
            }
            if window == 0 {
                return Err(ConfigError::new(
                    "SLUICEGATE_BREAKER_WINDOW",
                    0,
                    "at least 1",
                ));
            }
        }
        Ok(())
    }
}

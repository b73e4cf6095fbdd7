//! A publisher's [`Pressure`] as Prometheus families, read at the moment
//! of a scrape. Every name here is listed in the README's metrics table.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::Publish;
use crate::ops::{counter, gauge};

/// The `publish_*` families of one publisher: register it in a registry
/// (`Registry::register_collector`), or encode it from your own collector.
///
/// ```
/// # async fn run(publisher: std::sync::Arc<dyn sluicegate::publish::Publish>) {
/// use prometheus_client::registry::Registry;
/// use sluicegate::publish::Families;
///
/// let mut registry = Registry::with_prefix("sluicegate");
/// registry.register_collector(Box::new(Families::new(publisher)));
/// # }
/// ```
#[derive(Clone)]
pub struct Families(Arc<dyn Publish>);

impl fmt::Debug for Families {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Families").field(&self.0.pressure()).finish()
    }
}

impl Families {
    /// The families of `publisher`.
    pub fn new(publisher: Arc<dyn Publish>) -> Self {
        Self(publisher)
    }

    /// Encodes them into `e`.
    pub fn encode_into(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let p = self.0.pressure();
        gauge(
            e,
            "publish_unconfirmed",
            "Publishes waiting for the broker's confirm now.",
            p.unconfirmed as f64,
        )?;
        gauge(
            e,
            "publish_unconfirmed_limit",
            "Publishes that may wait for a confirm at once, at most.",
            p.limit as f64,
        )?;
        gauge(
            e,
            "publish_blocked",
            "1 while the broker blocks publishers (a resource alarm, a full producer queue).",
            f64::from(u8::from(p.blocked.is_some())),
        )?;
        gauge(
            e,
            "publish_confirm_rate",
            "Confirms a second, recently.",
            p.confirm_rate,
        )?;
        counter(
            e,
            "publish_confirmed",
            "Publishes the broker confirmed.",
            p.confirmed,
        )?;
        counter(
            e,
            "publish_refused",
            "Publishes the broker refused (nacked, unroutable, too large).",
            p.refused,
        )?;
        counter(
            e,
            "publish_saturated",
            "Publishes turned away for want of room (policy fail, or a wait past its deadline).",
            p.saturated,
        )
    }
}

impl Collector for Families {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        self.encode_into(&mut e)
    }
}

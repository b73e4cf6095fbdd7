//! Admission's families, read at the moment of a scrape. Every name here
//! is listed in the README's metrics table.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use sluicegate::ops::{counter, gauge, labelled};
use sluicegate::publish::Families as PublisherFamilies;

use super::{Admission, Reason};

#[derive(Debug)]
pub(super) struct Families(pub(super) Admission);

impl Collector for Families {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let a = &self.0;
        counter(
            &mut e,
            "admission_admitted",
            "Requests admitted.",
            a.admitted(),
        )?;
        let rejected: Vec<_> = Reason::ALL
            .iter()
            .map(|r| (vec![("reason", r.name().to_owned())], a.rejected(*r)))
            .collect();
        labelled(
            &mut e,
            "admission_rejected",
            "Requests turned away, by reason (503: publisher_blocked, publisher_full, backlog; 429: client_rate).",
            MetricType::Counter,
            &rejected,
        )?;
        if let Some(backlog) = a.backlog() {
            gauge(
                &mut e,
                "admission_backlog",
                "The consumers' backlog as admission estimates it now.",
                backlog,
            )?;
        }
        if let Some(max) = a.0.config.backlog_max {
            gauge(
                &mut e,
                "admission_backlog_max",
                "The backlog at which requests are turned away.",
                max as f64,
            )?;
        }
        if let Some(rate) = a.drain_per_second() {
            gauge(
                &mut e,
                "admission_drain_rate",
                "Messages the consumers drain a second, as measured or reported.",
                rate,
            )?;
        }
        if let Some(clients) = &a.0.clients {
            gauge(
                &mut e,
                "admission_clients",
                "Clients with a token bucket now (seen lately).",
                clients.len() as f64,
            )?;
        }
        match &a.0.publisher {
            Some(p) => PublisherFamilies::new(std::sync::Arc::clone(p)).encode_into(&mut e),
            None => Ok(()),
        }
    }
}

//! A scrape of `/metrics`, read with a real OpenMetrics parser
//! (openmetrics-parser, a test-only dependency): a malformed exposition
//! fails the parse, and values are read by family and labels.

use std::collections::BTreeSet;

use openmetrics_parser::{
    MetricFamily, MetricsExposition, OpenMetricsType, OpenMetricsValue, openmetrics,
};

/// One parsed exposition.
#[derive(Debug)]
pub struct Exposition(MetricsExposition<OpenMetricsType, OpenMetricsValue>);

impl Exposition {
    /// Parses OpenMetrics text; an error names what the parser refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        openmetrics::parse_openmetrics(text)
            .map(Self)
            .map_err(|e| format!("not valid OpenMetrics: {e:?}\n{text}"))
    }

    fn family(&self, name: &str) -> Option<&MetricFamily<OpenMetricsType, OpenMetricsValue>> {
        self.0.families.get(name)
    }

    /// The samples of a family whose labels include all of `labels`.
    fn matching<'a>(
        &'a self,
        name: &str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a OpenMetricsValue> + 'a {
        self.family(name).into_iter().flat_map(move |f| {
            f.iter_samples().filter_map(move |s| {
                let set = s.get_labelset().ok()?;
                labels
                    .iter()
                    .all(|(k, v)| set.get_label_value(k) == Some(*v))
                    .then_some(&s.value)
            })
        })
    }

    /// The value of a counter or gauge family's sample with `labels`
    /// (summed over samples that match, so a subset of labels sums).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for v in self.matching(name, labels) {
            let x = match v {
                OpenMetricsValue::Counter(c) => c.value.as_f64(),
                OpenMetricsValue::Gauge(g) | OpenMetricsValue::Unknown(g) => g.as_f64(),
                _ => continue,
            };
            found = Some(found.unwrap_or(0.0) + x);
        }
        found
    }

    /// A histogram family's count and its +Inf bucket, which must agree.
    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        self.matching(name, labels).find_map(|v| match v {
            OpenMetricsValue::Histogram(h) => {
                let inf = h.buckets.iter().find(|b| b.upper_bound.is_infinite());
                let count = h.count?;
                assert_eq!(
                    inf.map(|b| b.count.as_f64() as u64),
                    Some(count),
                    "{name}: +Inf bucket is not the count"
                );
                Some(count)
            }
            _ => None,
        })
    }

    /// Each value a label takes in a family.
    pub fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.family(name)
            .into_iter()
            .flat_map(|f| f.iter_samples())
            .filter_map(|s| {
                s.get_labelset()
                    .ok()?
                    .get_label_value(label)
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Every series name a query may use: counters' `_total`, histograms'
    /// `_bucket`, `_sum` and `_count` (and the family's name), gauges'
    /// own name.
    pub fn series_names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for (name, family) in &self.0.families {
            match family.family_type {
                OpenMetricsType::Counter => {
                    names.insert(format!("{name}_total"));
                }
                OpenMetricsType::Histogram => {
                    names.insert(name.clone());
                    for suffix in ["bucket", "sum", "count"] {
                        names.insert(format!("{name}_{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.clone());
                }
            }
        }
        names
    }
}

/// Every `sluicegate_*` series name the alert rules and the dashboard in
/// `compose/` query.
pub fn names_used_in_compose() -> BTreeSet<String> {
    let compose = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../compose");
    let mut names = BTreeSet::new();
    for file in [
        "prometheus/alerts.yml",
        "grafana/dashboards/sluicegate.json",
    ] {
        let path = compose.join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let mut rest = text.as_str();
        while let Some(at) = rest.find("sluicegate_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

impl Exposition {
    /// The families that have no row of their own in the README's
    /// metrics table (`| \`name\` |`).
    pub fn undocumented(&self) -> Vec<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
        let readme = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let mut names: Vec<String> = self.0.families.keys().cloned().collect();
        names.sort();
        names.retain(|name| !readme.contains(&format!("| `{name}` |")));
        names
    }
}

/// `GET /metrics` at `addr`, parsed; panics unless it is 200 and valid.
pub async fn scrape(addr: std::net::SocketAddr) -> Exposition {
    let response = crate::http_get(addr, "/metrics")
        .await
        .unwrap_or_else(|e| panic!("scraping {addr}: {e}"));
    assert_eq!(response.status, 200, "{response:?}");
    Exposition::parse(&response.body).unwrap_or_else(|e| panic!("{e}"))
}

/// Asks `/readyz` at `addr` until it answers `status` (within 30 s).
pub async fn readyz_until(addr: std::net::SocketAddr, status: u16) -> crate::HttpResponse {
    for _ in 0..300 {
        let response = crate::http_get(addr, "/readyz")
            .await
            .unwrap_or_else(|e| panic!("asking {addr}/readyz: {e}"));
        if response.status == status {
            return response;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("/readyz never answered {status}");
}

impl Exposition {
    /// Checks that every family has its row in the README's table, and
    /// that every name `compose/` queries is emitted, but for the other
    /// broker's (those starting with `other_broker`).
    pub fn assert_documented_and_queried(&self, other_broker: &str) {
        let undocumented = self.undocumented();
        assert!(
            undocumented.is_empty(),
            "families missing from the README's table: {undocumented:?}"
        );
        let emitted = self.series_names();
        let missing: Vec<_> = names_used_in_compose()
            .into_iter()
            .filter(|n| !n.starts_with(other_broker) && !emitted.contains(n))
            .collect();
        assert!(
            missing.is_empty(),
            "rules or dashboard use names the exporter does not emit: {missing:?}"
        );
    }
}

//! The messages a run sends, one after another, made as they are needed
//! (a five-minute run at 8,000 a second would hold millions): synthetic,
//! from a seeded generator, or read back from a recorded trace (JSON
//! lines of arrival time, priority and handler time).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::spec::{Shape, Work};

/// One message: when it is sent, its priority, how long its handler
/// works on it, and whether it is poison (its handler fails every time).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Arrival {
    /// Since the start of the run, in microseconds.
    pub(crate) at_us: u64,
    pub(crate) priority: u8,
    pub(crate) work_us: u64,
    #[serde(default)]
    pub(crate) fail: bool,
}

impl Arrival {
    pub(crate) fn at(&self) -> Duration {
        Duration::from_micros(self.at_us)
    }
}

/// A message's body on the wire: what the handler does with it, and what
/// a recording reads back.
#[derive(Serialize, Deserialize)]
pub(crate) struct Job {
    /// Its place in the run.
    pub(crate) n: u64,
    /// When the producer sent it, since the start of the run.
    pub(crate) sent_us: u64,
    pub(crate) work_us: u64,
    pub(crate) fail: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) pad: String,
}

impl Job {
    /// The body of the `n`th job, taking `work`, sent at the start.
    pub(crate) fn body(n: u64, work: Duration) -> Vec<u8> {
        let job = Job {
            n,
            sent_us: 0,
            work_us: work.as_micros() as u64,
            fail: false,
            pad: String::new(),
        };
        serde_json::to_vec(&job).unwrap_or_default()
    }
}

/// The synthetic load.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Load {
    pub(crate) rate: f64,
    pub(crate) shape: Shape,
    pub(crate) length: Duration,
    pub(crate) work: Work,
    /// The share of handler calls that fail (retryably), whatever the
    /// message.
    pub(crate) fail_rate: f64,
    /// The dependency is down (every call fails fast) over this share of
    /// the run.
    pub(crate) outage: Option<(f64, f64)>,
    /// Weights, highest priority first.
    pub(crate) mix: Vec<u32>,
    pub(crate) seed: u64,
}

/// Synthetic arrivals: Poisson at the shape's rate of the moment.
pub(crate) struct Synthetic {
    load: Load,
    rng: fastrand::Rng,
    t: f64,
}

impl Synthetic {
    pub(crate) fn new(load: Load) -> Self {
        let rng = fastrand::Rng::with_seed(load.seed);
        Self { load, rng, t: 0.0 }
    }

    fn priority(&mut self) -> u8 {
        let total: u32 = self.load.mix.iter().sum();
        let mut pick = self.rng.u32(0..total.max(1));
        let top = self.load.mix.len().saturating_sub(1);
        for (i, w) in self.load.mix.iter().enumerate() {
            if pick < *w {
                return u8::try_from(top - i).unwrap_or(0);
            }
            pick -= w;
        }
        0
    }
}

impl Iterator for Synthetic {
    type Item = Arrival;

    fn next(&mut self) -> Option<Arrival> {
        let length = self.load.length.as_secs_f64();
        loop {
            if self.t >= length {
                return None;
            }
            let now = Duration::from_secs_f64(self.t);
            let rate = self
                .load
                .shape
                .rate_at(self.load.rate, now, self.load.length);
            if rate <= 0.0 {
                self.t += 0.01;
                continue;
            }
            // Exponential gaps: a Poisson stream at this rate.
            self.t += -(1.0 - self.rng.f64()).ln() / rate;
            break;
        }
        if self.t >= length {
            return None;
        }
        Some(Arrival {
            at_us: (self.t * 1e6) as u64,
            priority: self.priority(),
            work_us: self.load.work.draw(&mut self.rng).as_micros() as u64,
            fail: false,
        })
    }
}

/// Arrivals read back from a trace, in order; a line that does not parse
/// ends the run with an error naming the line.
pub(crate) struct Trace {
    lines: std::io::Lines<BufReader<std::fs::File>>,
    line: usize,
    path: String,
    pub(crate) error: Option<String>,
}

impl Trace {
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        let file =
            std::fs::File::open(path).map_err(|e| format!("--trace {}: {e}", path.display()))?;
        Ok(Self {
            lines: BufReader::new(file).lines(),
            line: 0,
            path: path.display().to_string(),
            error: None,
        })
    }
}

impl Iterator for Trace {
    type Item = Arrival;

    fn next(&mut self) -> Option<Arrival> {
        loop {
            let line = self.lines.next()?;
            self.line += 1;
            let parsed = line
                .map_err(|e| e.to_string())
                .and_then(|l| match l.trim() {
                    "" => Ok(None),
                    l => serde_json::from_str(l).map(Some).map_err(|e| e.to_string()),
                });
            match parsed {
                Ok(Some(arrival)) => return Some(arrival),
                Ok(None) => continue,
                Err(e) => {
                    self.error = Some(format!("{} line {}: {e}", self.path, self.line));
                    return None;
                }
            }
        }
    }
}

/// Writes arrivals as a trace, one JSON line each.
pub(crate) fn record(path: &Path, arrivals: impl Iterator<Item = Arrival>) -> std::io::Result<u64> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut n = 0;
    for arrival in arrivals {
        serde_json::to_writer(&mut out, &arrival)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(rate: f64, seconds: u64) -> Load {
        Load {
            rate,
            shape: Shape::Steady,
            length: Duration::from_secs(seconds),
            work: Work::Fixed(Duration::from_millis(10)),
            fail_rate: 0.1,
            outage: Some((0.5, 0.75)),
            mix: vec![10, 30, 60],
            seed: 7,
        }
    }

    #[test]
    fn a_steady_poisson_load_sends_about_its_rate_with_its_mix() {
        let all: Vec<_> = Synthetic::new(load(1000.0, 20)).collect();
        let n = all.len() as f64;
        assert!((n - 20_000.0).abs() < 600.0, "{n}");
        assert!(all.windows(2).all(|w| w[0].at_us <= w[1].at_us), "in order");
        let share = |p| all.iter().filter(|a| a.priority == p).count() as f64 / n;
        assert!((share(2) - 0.1).abs() < 0.02 && (share(0) - 0.6).abs() < 0.02);
        assert!(all.iter().all(|a| a.work_us == 10_000 && !a.fail));
    }

    #[test]
    fn the_same_seed_gives_the_same_run_and_a_trace_plays_it_back() {
        let a: Vec<_> = Synthetic::new(load(200.0, 2)).collect();
        let b: Vec<_> = Synthetic::new(load(200.0, 2)).collect();
        assert_eq!(a, b);
        let path =
            std::env::temp_dir().join(format!("sluicegate-trace-{}.jsonl", std::process::id()));
        let written = record(&path, a.iter().copied()).unwrap_or(0);
        assert_eq!(written as usize, a.len());
        let mut trace = Trace::open(&path)
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let back: Vec<_> = trace.by_ref().collect();
        assert_eq!(back, a);
        assert_eq!(trace.error, None);
        std::fs::write(
            &path,
            "{\"at_us\": 1, \"priority\": 0, \"work_us\": 5}\nnot json\n",
        )
        .unwrap_or(());
        let mut bad = Trace::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bad.by_ref().count(), 1);
        assert!(bad.error.is_some_and(|e| e.contains("line 2")));
        let _ = std::fs::remove_file(path);
    }
}

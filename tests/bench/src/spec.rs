//! What a scenario is: the load (rate and shape), the handler's time and
//! failures, the downstream it shares, the priority mix, and the worker's
//! `SLUICEGATE_*` settings. Parsed from the command line; each parse error
//! names the option and the value.

use std::time::Duration;

/// How the producer's rate moves over the run (the mean is the rate for
/// steady and bursty).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Shape {
    /// The rate, all along.
    Steady,
    /// Five times the rate for the first fifth of every 2 s, nothing the
    /// rest: the same mean in bursts.
    Bursty,
    /// The rate for the first third, three times it for the second, the
    /// rate again for the last: a step up and back.
    Step,
}

impl Shape {
    /// Messages a second at `t` into the run of `length`, for `rate`.
    pub(crate) fn rate_at(self, rate: f64, t: Duration, length: Duration) -> f64 {
        match self {
            Shape::Steady => rate,
            Shape::Bursty => {
                let phase = t.as_secs_f64() % 2.0;
                if phase < 0.4 { rate * 5.0 } else { 0.0 }
            }
            Shape::Step => {
                let third = length.as_secs_f64() / 3.0;
                let at = t.as_secs_f64();
                if at >= third && at < 2.0 * third {
                    rate * 3.0
                } else {
                    rate
                }
            }
        }
    }
}

/// How long the handler works on a message.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Work {
    /// Always this long.
    Fixed(Duration),
    /// Evenly between the two.
    Uniform(Duration, Duration),
    /// `base`, but a share `p` of messages take `slow`.
    Tail {
        base: Duration,
        p: f64,
        slow: Duration,
    },
}

impl Work {
    /// Draws one handler time.
    pub(crate) fn draw(&self, rng: &mut fastrand::Rng) -> Duration {
        match *self {
            Work::Fixed(d) => d,
            Work::Uniform(lo, hi) => lo + (hi - lo).mul_f64(rng.f64()),
            Work::Tail { base, p, slow } => {
                if rng.f64() < p {
                    slow
                } else {
                    base
                }
            }
        }
    }

    /// The mean handler time.
    pub(crate) fn mean(&self) -> Duration {
        match *self {
            Work::Fixed(d) => d,
            Work::Uniform(lo, hi) => (lo + hi) / 2,
            Work::Tail { base, p, slow } => base.mul_f64(1.0 - p) + slow.mul_f64(p),
        }
    }
}

impl std::fmt::Display for Work {
    /// As `--work` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = |d: &Duration| format!("{}us", d.as_micros());
        match self {
            Work::Fixed(d) => write!(f, "fixed:{}", us(d)),
            Work::Uniform(lo, hi) => write!(f, "uniform:{}-{}", us(lo), us(hi)),
            Work::Tail { base, p, slow } => {
                write!(f, "tail:{},{}%:{}", us(base), p * 100.0, us(slow))
            }
        }
    }
}

/// `10ms`, `1.5s`, `250us`.
pub(crate) fn duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = raw
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| raw.split_at(i))
        .ok_or_else(|| format!("{raw:?} has no unit (us, ms or s)"))?;
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a number and a unit"))?;
    let seconds = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        _ => return Err(format!("{raw:?}: the unit must be us, ms or s")),
    };
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(format!("{raw:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `fixed:10ms`, `uniform:5ms-15ms`, `tail:10ms,1%:200ms`.
pub(crate) fn work(raw: &str) -> Result<Work, String> {
    let bad =
        || format!("--work {raw:?}: expected fixed:10ms, uniform:5ms-15ms or tail:10ms,1%:200ms");
    let (kind, rest) = raw.split_once(':').ok_or_else(bad)?;
    match kind {
        "fixed" => Ok(Work::Fixed(duration(rest)?)),
        "uniform" => {
            let (lo, hi) = rest.split_once('-').ok_or_else(bad)?;
            let (lo, hi) = (duration(lo)?, duration(hi)?);
            if hi < lo {
                return Err(bad());
            }
            Ok(Work::Uniform(lo, hi))
        }
        "tail" => {
            let (base, tail) = rest.split_once(',').ok_or_else(bad)?;
            let (share, slow) = tail.split_once(':').ok_or_else(bad)?;
            let p: f64 = share.trim_end_matches('%').parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&p) {
                return Err(bad());
            }
            Ok(Work::Tail {
                base: duration(base)?,
                p: p / 100.0,
                slow: duration(slow)?,
            })
        }
        _ => Err(bad()),
    }
}

/// Priority weights, highest priority first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mix(pub(crate) Vec<u32>);

/// `10,30,60`: the share of each priority, highest first (priority 2,
/// 1, 0 for three shares), as weights.
pub(crate) fn mix(raw: &str) -> Result<Mix, String> {
    let weights: Result<Vec<u32>, _> = raw.split(',').map(|w| w.trim().parse()).collect();
    match weights {
        Ok(w) if !w.is_empty() && w.len() <= 10 && w.iter().any(|x| *x > 0) => Ok(Mix(w)),
        _ => Err(format!(
            "--priorities {raw:?}: expected up to 10 whole-number weights, highest priority first (10,30,60)"
        )),
    }
}

/// `30%-60%`: a window of the run, as shares of its length.
pub(crate) fn window(raw: &str) -> Result<(f64, f64), String> {
    let bad = || format!("--outage {raw:?}: expected a window such as 30%-60%");
    let (from, to) = raw.split_once('-').ok_or_else(bad)?;
    let share = |s: &str| -> Result<f64, String> {
        let v: f64 = s.trim().trim_end_matches('%').parse().map_err(|_| bad())?;
        Ok(v / 100.0)
    };
    let (from, to) = (share(from)?, share(to)?);
    if !(0.0 <= from && from < to && to <= 1.0) {
        return Err(bad());
    }
    Ok((from, to))
}

/// `SLUICEGATE_OVERFLOW=drop`.
pub(crate) fn setting(raw: &str) -> Result<(String, String), String> {
    let (name, value) = raw
        .split_once('=')
        .ok_or_else(|| format!("--set {raw:?}: expected NAME=value"))?;
    let name = name.trim();
    let known = sluicegate::config::ENV_VARS
        .iter()
        .chain(sluicegate_amqp::ENV_VARS)
        .chain(sluicegate_kafka::ENV_VARS)
        .any(|v| v.name == name);
    if !known {
        return Err(format!(
            "--set {name}: not a variable sluicegate reads (see the README's tables)"
        ));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_times_parse_and_bad_ones_name_the_value() {
        assert_eq!(
            work("fixed:10ms"),
            Ok(Work::Fixed(Duration::from_millis(10)))
        );
        assert_eq!(
            work("uniform:5ms-15ms").map(|w| w.mean()),
            Ok(Duration::from_millis(10))
        );
        let tail = work("tail:10ms,1%:200ms").unwrap_or(Work::Fixed(Duration::ZERO));
        assert_eq!(tail.mean(), Duration::from_micros(11_900));
        assert_eq!(work(&tail.to_string()), Ok(tail), "written as it is read");
        for bad in [
            "fixed:10",
            "uniform:15ms-5ms",
            "tail:10ms",
            "slow:1s",
            "fixed:-1ms",
        ] {
            let e = work(bad).err().unwrap_or_default();
            assert!(
                e.contains(bad) || e.contains(&bad[bad.find(':').unwrap_or(0) + 1..]),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn shapes_keep_their_mean_or_step_up_and_back() {
        let length = Duration::from_secs(30);
        let mean = |shape: Shape| {
            let n = 3000;
            (0..n)
                .map(|i| {
                    let at = length.mul_f64((f64::from(i) + 0.5) / f64::from(n));
                    shape.rate_at(100.0, at, length)
                })
                .sum::<f64>()
                / f64::from(n)
        };
        assert!((mean(Shape::Bursty) - 100.0).abs() < 1.0);
        assert_eq!(
            Shape::Step.rate_at(100.0, Duration::from_secs(15), length),
            300.0
        );
        assert_eq!(
            Shape::Step.rate_at(100.0, Duration::from_secs(25), length),
            100.0
        );
    }

    #[test]
    fn settings_must_be_variables_sluicegate_reads() {
        assert_eq!(
            setting("SLUICEGATE_OVERFLOW=drop"),
            Ok(("SLUICEGATE_OVERFLOW".into(), "drop".into()))
        );
        assert!(setting("SLUICEGATE_OVERFLOWS=drop").is_err());
        assert!(setting("no-equals").is_err());
        assert_eq!(mix("10,30,60"), Ok(Mix(vec![10, 30, 60])));
        assert!(mix("0,0").is_err());
        assert_eq!(window("30%-60%"), Ok((0.3, 0.6)));
        assert!(window("60%-30%").is_err());
    }
}

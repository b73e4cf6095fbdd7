//! What the runtime does when its lanes are full ([`Overflow`]), and what
//! happens to a message it sheds ([`ShedAction`]).

use std::fmt;
use std::str::FromStr;

/// What the runtime does with an arriving message when its lanes are full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// Stop pulling and pause the source: the broker holds the backlog.
    Block,
    /// Requeue the arriving message at the broker (for competing consumers),
    /// then stop pulling until a slot frees, so a lone worker never spins.
    Nack,
    /// Hand it back to the broker to redeliver after the overflow delay,
    /// holding nothing meanwhile. The attempt number does not grow.
    Delay,
    /// Acknowledge and discard it, counted and logged.
    Drop,
    /// Priority shedding: an arriving message of higher priority than the
    /// lowest waiting one takes its place, and the lowest one (the oldest of
    /// its lane) is settled by the [`ShedAction`]; otherwise the arriving
    /// message is. High priority is never shed for lower.
    Shed,
    /// Early drop (RED): an arriving message is shed by the [`ShedAction`]
    /// with a probability that grows with the lanes' fill, its square
    /// (a quarter full: 6%, half: 25%), and always once they are full; so
    /// shedding starts before the worker is saturated, gradually.
    EarlyDrop,
}

/// What happens to a shed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShedAction {
    /// Requeue it at the broker (for another worker); intake holds until a
    /// slot frees, so a lone worker does not spin.
    Requeue,
    /// Hand it back to redeliver after the overflow delay.
    Delay,
    /// Dead-letter it (a parking queue), with the reason.
    DeadLetter,
    /// Acknowledge and discard it, counted.
    Drop,
}

impl ShedAction {
    /// The names accepted in `SLUICEGATE_SHED_ACTION`.
    pub const NAMES: &'static str = "requeue, delay, dead-letter, drop";
}

impl FromStr for ShedAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "requeue" | "nack" => Ok(Self::Requeue),
            "delay" | "defer" => Ok(Self::Delay),
            "dead-letter" | "dead_letter" | "deadletter" => Ok(Self::DeadLetter),
            "drop" => Ok(Self::Drop),
            _ => Err(format!("one of {}", Self::NAMES)),
        }
    }
}

impl Overflow {
    /// The names accepted in `SLUICEGATE_OVERFLOW`.
    pub const NAMES: &'static str = "block, nack, delay (or defer), drop, shed, early-drop";

    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Overflow::Block => "block",
            Overflow::Nack => "nack",
            Overflow::Delay => "delay",
            Overflow::Drop => "drop",
            Overflow::Shed => "shed",
            Overflow::EarlyDrop => "early-drop",
        }
    }
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Overflow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "block" => Ok(Overflow::Block),
            "nack" | "requeue" => Ok(Overflow::Nack),
            "delay" | "defer" => Ok(Overflow::Delay),
            "drop" => Ok(Overflow::Drop),
            "shed" => Ok(Overflow::Shed),
            "early-drop" | "early_drop" | "red" => Ok(Overflow::EarlyDrop),
            _ => Err(format!("one of {}", Overflow::NAMES)),
        }
    }
}

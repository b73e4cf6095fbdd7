//! Variables that look like ours and are not: a typo such as
//! `SLUICEGATE_PREFECH` would otherwise be ignored without a word, and the
//! worker would run with a setting its operator believes changed.

use std::fmt;

use super::{Env, Var};

/// The prefix every sluicegate variable has.
const PREFIX: &str = "SLUICEGATE_";

/// A `SLUICEGATE_*` variable that is set and that no table knows.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unknown {
    /// The variable's name.
    pub name: String,
    /// The known name closest to it, when one is close.
    pub closest: Option<&'static str>,
}

impl fmt::Display for Unknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not a sluicegate variable", self.name)?;
        if let Some(closest) = self.closest {
            write!(f, " (did you mean {closest}?)")?;
        }
        f.write_str("; it is ignored")
    }
}

/// The `SLUICEGATE_*` variables in `env` that none of `tables` knows. An
/// entry ending in `<...>` (such as `SLUICEGATE_KAFKA_<PROPERTY>`) covers
/// every name it starts.
///
/// ```
/// use sluicegate::config::{unknown_variables, Env, ENV_VARS};
///
/// let env = Env::from_pairs([("SLUICEGATE_PREFECH", "100"), ("SLUICEGATE_PREFETCH", "10")]);
/// let unknown = unknown_variables(&env, &[ENV_VARS]);
/// assert_eq!(unknown.len(), 1);
/// assert_eq!(unknown[0].closest, Some("SLUICEGATE_PREFETCH"));
/// ```
pub fn unknown_variables(env: &Env, tables: &[&[Var]]) -> Vec<Unknown> {
    let known = || tables.iter().flat_map(|table| table.iter());
    env.with_prefix(PREFIX)
        .map(|(name, _)| name)
        .filter(|name| {
            !known().any(|var| match var.name.find('<') {
                Some(open) => name.starts_with(&var.name[..open]),
                None => var.name == *name,
            })
        })
        .map(|name| Unknown {
            name: name.to_owned(),
            closest: known()
                .map(|var| var.name)
                .filter(|known| !known.contains('<'))
                .map(|known| (strsim::damerau_levenshtein(name, known), known))
                .filter(|(distance, _)| *distance <= 3)
                .min()
                .map(|(_, known)| known),
        })
        .collect()
}

/// Logs a warning for each `SLUICEGATE_*` variable of the process's
/// environment that none of `tables` knows; how many there were. A program
/// calls it once at start with the tables of every part it uses.
pub fn warn_unknown_variables(tables: &[&[Var]]) -> usize {
    let unknown = unknown_variables(&Env::process(), tables);
    for variable in &unknown {
        tracing::warn!("{variable}");
    }
    unknown.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ENV_VARS;

    const ADAPTER: &[Var] = &[Var::new("SLUICEGATE_KAFKA_<PROPERTY>", "", "", "")];

    #[test]
    fn a_typo_is_named_with_the_closest_known_name() {
        let env = Env::from_pairs([
            ("SLUICEGATE_PREFECH", "1"),
            ("SLUICEGATE_OVERFLOW", "drop"),
            ("SLUICEGATE_KAFKA_SECURITY_PROTOCOL", "SSL"),
            ("SLUICEGATE_NOTHING_LIKE_IT", "x"),
            ("PATH", "/bin"),
        ]);
        let unknown = unknown_variables(&env, &[ENV_VARS, ADAPTER]);
        let text: Vec<String> = unknown.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "SLUICEGATE_NOTHING_LIKE_IT is not a sluicegate variable; it is ignored",
                "SLUICEGATE_PREFECH is not a sluicegate variable (did you mean SLUICEGATE_PREFETCH?); it is ignored",
            ]
        );
    }
}

//! What an indicator says: its [`Signal`], the [`Reading`] shown and logged, and, when it
//! cannot tell, the typed [`UnknownCause`] (with the grant that would make it readable). Also
//! the protections that are off (readings an operator can fix) and the notice that names them.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{HealthSample, HealthSettings, Indicator};

/// What an indicator says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    /// Go on.
    Normal,
    /// Hold the migration.
    Stop,
    /// Cannot tell (no privilege, no meaning on this engine, no data yet): logged, no hold.
    Unknown,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Normal => "normal",
            Self::Stop => "stop",
            Self::Unknown => "unknown",
        })
    }
}

/// Why an indicator reads `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownCause {
    /// This role may not read it: [`Reading::grant`] says what would turn it on.
    Privilege,
    /// The engine has no such thing (SQLite: no autovacuum workers, archiver, replicas).
    NotOnEngine,
    /// Not enough samples yet (the WAL rate's first sample, the first sub-batches).
    NoDataYet,
    /// The reading failed (the probe errored, returned NULL or no row).
    Failed,
}

/// One indicator's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    /// Which indicator.
    pub indicator: Indicator,
    /// What it says.
    pub signal: Signal,
    /// What it saw, for humans (`"replica standby1 is 52.0 MiB behind"`).
    pub reading: String,
    /// The threshold it compares against, for humans.
    pub threshold: String,
    /// Why it cannot tell, when it cannot (also set when `--require-health` turned that
    /// into a stop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<UnknownCause>,
    /// The exact statement that would make it readable (`GRANT pg_read_all_stats TO app`),
    /// when a missing privilege is why it cannot tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

impl Reading {
    /// `indicator: reading (threshold)`: the reason written to a hold's log row.
    pub fn reason(&self) -> String {
        format!("{}: {} ({})", self.indicator, self.shown(), self.threshold)
    }

    /// Whether it holds only because it cannot be read (`--require-health` turned its
    /// `unknown` into a stop): a stop that keeps its [`UnknownCause`].
    pub fn holds_unreadable(&self) -> bool {
        self.signal == Signal::Stop && self.cause.is_some()
    }

    /// The reading as shown to people: `unknown: ` first when it holds only because it
    /// cannot be read ([`Reading::holds_unreadable`]); [`Reading::reading`] is what it saw.
    pub fn shown(&self) -> Cow<'_, str> {
        if self.holds_unreadable() {
            Cow::Owned(format!("unknown: {}", self.reading))
        } else {
            Cow::Borrowed(&self.reading)
        }
    }

    /// Whether this reading is a protection that is off: it cannot be read for a reason an
    /// operator can fix (a grant, a failing probe), as opposed to one that only needs more
    /// samples or that the engine has no notion of.
    pub fn is_protection_off(&self) -> bool {
        matches!(
            self.cause,
            Some(UnknownCause::Privilege | UnknownCause::Failed)
        )
    }
}

impl Reading {
    /// A verdict: `stop` or `normal`.
    pub(super) fn judged(
        indicator: Indicator,
        stop: bool,
        reading: String,
        threshold: String,
    ) -> Self {
        Self {
            indicator,
            signal: if stop { Signal::Stop } else { Signal::Normal },
            reading,
            threshold,
            cause: None,
            grant: None,
        }
    }

    /// No verdict, and why.
    pub(super) fn unknown(
        indicator: Indicator,
        cause: UnknownCause,
        reading: String,
        threshold: String,
    ) -> Self {
        Self {
            indicator,
            signal: Signal::Unknown,
            reading,
            threshold,
            cause: Some(cause),
            grant: None,
        }
    }

    /// No verdict: the sample could not read what the indicator needs; `grant` is what would
    /// let the role read it, when that is why.
    pub(super) fn unreadable(
        indicator: Indicator,
        sample: &HealthSample,
        grant: Option<&String>,
        threshold: String,
    ) -> Self {
        match (grant, &sample.not_available) {
            (Some(grant), _) => {
                Self::not_granted(indicator, sample, grant, String::new(), threshold)
            }
            (None, Some(why)) => {
                Self::unknown(indicator, UnknownCause::NotOnEngine, why.clone(), threshold)
            }
            (None, None) => Self::unknown(
                indicator,
                UnknownCause::Failed,
                "not readable".into(),
                threshold,
            ),
        }
    }

    /// No verdict: the role lacks `grant`; `what` says what it could read (or is empty).
    pub(super) fn not_granted(
        indicator: Indicator,
        sample: &HealthSample,
        grant: &str,
        what: String,
        threshold: String,
    ) -> Self {
        let role = sample.role.as_deref().unwrap_or("?");
        let mut reading = format!("not readable by role {role}: needs {grant}");
        if !what.is_empty() {
            reading = format!("{what}; the rest is {reading}");
        }
        Self {
            grant: Some(grant.to_owned()),
            ..Self::unknown(indicator, UnknownCause::Privilege, reading, threshold)
        }
    }
}

/// The readings of `settings`' indicators (those not switched off) that are protections off
/// ([`Reading::is_protection_off`]): they read `unknown` and never hold, unless
/// `--require-health` is set.
pub fn protections_off<'a>(readings: &'a [Reading], settings: &HealthSettings) -> Vec<&'a Reading> {
    readings
        .iter()
        .filter(|r| r.is_protection_off() && !settings.off.contains(&r.indicator))
        .collect()
}

/// The notice for protections that are off, one line per indicator with the grant that
/// would turn it on, and what happens meanwhile; `None` when every protection is on.
pub fn protections_off_notice(readings: &[Reading], settings: &HealthSettings) -> Option<String> {
    let off = protections_off(readings, settings);
    if off.is_empty() {
        return None;
    }
    let mut lines = vec![format!(
        "{} health indicator{} cannot be read, {}:",
        off.len(),
        if off.len() == 1 { "" } else { "s" },
        if settings.require_health {
            "holding the migration until readable (--require-health)"
        } else {
            "reading unknown, which never holds (--require-health would hold instead)"
        }
    )];
    for r in off {
        // The reading names the grant when one would turn it on.
        lines.push(format!("  {}: {}", r.indicator, r.reading));
    }
    Some(lines.join("\n"))
}

/// `GRANT role TO member`, the member quoted when it must be.
pub fn grant_statement(granted: &str, member: &str) -> String {
    let plain = member
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && member
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    let member = if plain {
        member.to_owned()
    } else {
        format!("\"{}\"", member.replace('"', "\"\""))
    };
    format!("GRANT {granted} TO {member}")
}

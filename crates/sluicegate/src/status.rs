//! The two state machines (jobs and migrations): their statuses and which changes are legal.
//!
//! Every status change in Sluicegate is checked here first, then applied by the store with an
//! `UPDATE ... WHERE status = <previous>` that writes the transition-log row in the same
//! transaction, and CHECK constraints in the schema back both up.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The status of a job (one key range of a migration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting to run. Left by a worker taking it (`running`).
    Pending,
    /// A worker holds it under a lease. Left by success (`succeeded`), an error or an expired
    /// lease found by another worker (`failed`).
    Running,
    /// Its last attempt failed. Left by a retry (`running`), an operator retry or a split
    /// (`pending`).
    Failed,
    /// Done. Terminal.
    Succeeded,
}

impl JobStatus {
    /// All statuses, in lifecycle order.
    pub const ALL: [JobStatus; 4] = [Self::Pending, Self::Running, Self::Failed, Self::Succeeded];

    /// The lowercase name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Failed => "failed",
            Self::Succeeded => "succeeded",
        }
    }

    /// Whether the job state machine allows `self -> next`.
    pub fn can_become(self, next: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, next),
            (Pending, Running)
                | (Failed, Running)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Failed, Pending)
        )
    }

    /// Whether `finished_at` is set in this status.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }

    /// Checks `self -> next` for job `job_id`, as an error when illegal.
    pub fn check(self, next: JobStatus, job_id: i64) -> Result<(), IllegalJobTransition> {
        if self.can_become(next) {
            Ok(())
        } else {
            Err(IllegalJobTransition {
                job_id,
                from: self,
                to: next,
            })
        }
    }
}

/// The status of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationStatus {
    /// Queued but not to be run. Left by `resume` (`active`), `finalize` or `cancel`.
    Paused,
    /// Workers run its jobs. Left by `pause`, `finalize`, the end of its range (`finished`),
    /// too many failures (`failed`) or `cancel`.
    Active,
    /// `finalize` is running its remaining jobs inline. Left by `finished`, `failed`, `cancel`.
    Finalizing,
    /// Every job succeeded. Terminal.
    Finished,
    /// Jobs failed beyond their retries. Left by an operator `retry` (`active`).
    Failed,
    /// Stopped for good by an operator. Terminal.
    Cancelled,
}

impl MigrationStatus {
    /// All statuses.
    pub const ALL: [MigrationStatus; 6] = [
        Self::Paused,
        Self::Active,
        Self::Finalizing,
        Self::Finished,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The lowercase name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paused => "paused",
            Self::Active => "active",
            Self::Finalizing => "finalizing",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether `finished_at` is set in this status.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Finished | Self::Failed | Self::Cancelled)
    }

    /// The status an `event` leads to from `self`, or `None` when the state machine forbids it.
    /// A `hold` keeps the status (it only sets `on_hold_until`).
    pub fn after(self, event: MigrationEvent) -> Option<MigrationStatus> {
        use MigrationEvent as E;
        use MigrationStatus::*;
        match (self, event) {
            (Active, E::Pause) => Some(Paused),
            (Paused, E::Resume) => Some(Active),
            (Active, E::Hold | E::Release | E::Throttle) => Some(Active),
            (Active | Paused | Finalizing, E::Resize) => Some(self),
            (Active | Paused, E::Set) => Some(self),
            (Active | Finalizing, E::LaneHold | E::LaneRelease | E::LaneMove) => Some(self),
            (Active | Finalizing, E::Verify) => Some(self),
            (Active | Paused, E::Finalize) => Some(Finalizing),
            (Active | Finalizing, E::Finish) => Some(Finished),
            (Active | Finalizing, E::Fail) => Some(Failed),
            (Failed, E::Retry) => Some(Active),
            (Paused | Active | Finalizing | Failed, E::Cancel) => Some(Cancelled),
            _ => None,
        }
    }

    /// Whether the migration state machine allows `self -> next` at all, by any event.
    pub fn can_become(self, next: MigrationStatus) -> bool {
        MigrationEvent::ALL
            .iter()
            .any(|event| event.is_change() && self.after(*event) == Some(next))
    }
}

/// What moved a migration: the `event` column of its transition log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationEvent {
    /// Created (the first log row; no previous status).
    Queue,
    /// `active -> paused`.
    Pause,
    /// `paused -> active`.
    Resume,
    /// Health put it on hold: the status stays, `on_hold_until` is set.
    Hold,
    /// `failed -> active`, failed jobs back to pending.
    Retry,
    /// `active|paused -> finalizing`.
    Finalize,
    /// `active|finalizing -> failed`.
    Fail,
    /// Any non-final status `-> cancelled`.
    Cancel,
    /// `active|finalizing -> finished`.
    Finish,
    /// The batch or sub-batch size changed (optimizer, timeout, tuner): the status stays.
    Resize,
    /// A hold ended: every indicator normal again at a re-check. The status stays.
    Release,
    /// The worker lengthened (or restored) its pause as a limit neared: the status stays.
    Throttle,
    /// An operator changed its settings (`sluicegate set`): the status stays; the reason says
    /// what changed, old -> new.
    Set,
    /// Lanes of a node held (the node down or unhealthy): the status stays, the other lanes
    /// go on; the reason names the node and the lanes.
    LaneHold,
    /// Held lanes go on again. The status stays.
    LaneRelease,
    /// A lane's shard was found on another node (moved or rebalanced): the status stays.
    LaneMove,
    /// Its `--verify` condition was checked after its last job: the status stays; the reason
    /// says how many rows were checked, how many violate it, and up to 10 of their keys.
    Verify,
}

impl MigrationEvent {
    /// All events.
    pub const ALL: [MigrationEvent; 17] = [
        Self::Queue,
        Self::Pause,
        Self::Resume,
        Self::Hold,
        Self::Retry,
        Self::Finalize,
        Self::Fail,
        Self::Cancel,
        Self::Finish,
        Self::Resize,
        Self::Release,
        Self::Throttle,
        Self::Set,
        Self::LaneHold,
        Self::LaneRelease,
        Self::LaneMove,
        Self::Verify,
    ];

    /// The lowercase name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Hold => "hold",
            Self::Retry => "retry",
            Self::Finalize => "finalize",
            Self::Fail => "fail",
            Self::Cancel => "cancel",
            Self::Finish => "finish",
            Self::Resize => "resize",
            Self::Release => "release",
            Self::Throttle => "throttle",
            Self::Set => "set",
            Self::LaneHold => "lane_hold",
            Self::LaneRelease => "lane_release",
            Self::LaneMove => "lane_move",
            Self::Verify => "verify",
        }
    }

    /// Whether the event changes the status (all but `queue`, which creates, and `hold`,
    /// `release`, `throttle` and `resize`, which record something else).
    fn is_change(self) -> bool {
        !matches!(
            self,
            Self::Queue
                | Self::Hold
                | Self::Release
                | Self::Throttle
                | Self::Resize
                | Self::Set
                | Self::LaneHold
                | Self::LaneRelease
                | Self::LaneMove
                | Self::Verify
        )
    }
}

/// A job status change the state machine forbids (becomes
/// [`Error::IllegalJobTransition`](crate::Error::IllegalJobTransition)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal job transition {from} -> {to} for job {job_id}")]
pub struct IllegalJobTransition {
    /// The job.
    pub job_id: i64,
    /// Its current status.
    pub from: JobStatus,
    /// The status asked for.
    pub to: JobStatus,
}

/// A stored status or event name that no enum knows (becomes
/// [`Error::Corrupt`](crate::Error::Corrupt)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    /// What was read (`job status`, `migration event`, ...).
    pub what: &'static str,
    /// The name as stored.
    pub name: String,
}

macro_rules! text_enum {
    ($ty:ty, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, UnknownName> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownName {
                        what: $what,
                        name: s.to_owned(),
                    })
            }
        }
    };
}

text_enum!(JobStatus, "job status");
text_enum!(MigrationStatus, "migration status");
text_enum!(MigrationEvent, "migration event");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_machine_is_exactly_the_spec() {
        use JobStatus::*;
        let legal = [
            (Pending, Running),
            (Failed, Running),
            (Running, Succeeded),
            (Running, Failed),
            (Failed, Pending),
        ];
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    legal.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn migration_machine_is_exactly_the_spec() {
        use MigrationStatus::*;
        let legal = [
            (Active, Paused),
            (Paused, Active),
            (Active, Finalizing),
            (Paused, Finalizing),
            (Active, Finished),
            (Finalizing, Finished),
            (Active, Failed),
            (Finalizing, Failed),
            (Failed, Active),
            (Paused, Cancelled),
            (Active, Cancelled),
            (Finalizing, Cancelled),
            (Failed, Cancelled),
        ];
        for from in MigrationStatus::ALL {
            for to in MigrationStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    legal.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn statuses_round_trip_as_text() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>().unwrap(), s);
        }
        for s in MigrationStatus::ALL {
            assert_eq!(s.as_str().parse::<MigrationStatus>().unwrap(), s);
        }
        assert!("Running".parse::<JobStatus>().is_err());
    }
}

//! Sluicegate runs large data migrations on big tables in small batches, in the background,
//! and records every state change of every job and migration in a transition log.
//!
//! Queue a migration with [`Sluicegate::queue`], run workers with [`Worker`], and read what
//! happened with [`Sluicegate::job_history`] and [`Sluicegate::migration_history`].
//!
//! A custom job kind implements [`JobKind`]; see `examples/custom_kind.rs`.

#![warn(missing_docs)]

pub mod client;
pub mod definition;
pub mod dialect;
pub mod engine;
pub mod error;
pub mod estimate;
pub mod failure;
pub mod fragment;
pub mod health;
pub mod ident;
pub mod job_metrics;
pub mod key;
pub mod kind;
pub mod model;
pub mod optimizer;
pub mod status;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::lanes::{lanes_by_node, LaneProgress, LaneState, NodeProgress};
pub use client::{
    check_reason, ConnectOptions, IfAbsent, Pace, Plan, Progress, QueueRequest, SettingsChange,
    Sluicegate, MAX_REASON_CHARS,
};
pub use definition::Definition;
pub use engine::{JobOutcome, StepOutcome, Worker, WorkerLoop, WorkerOptions};
pub use error::{Error, Result};
pub use failure::{Failure, FailureClass};
pub use key::{Key, KeyColumn, KeyOptions, KeySpec, KeyType, KeyWalk, Lower};
pub use kind::{JobKind, Registry, SubBatch, SubBatchConnection};
pub use model::{
    CitusTable, Job, JobCounts, JobTransition, Lane, Migration, MigrationTransition, NewLane,
    TargetIdentity,
};
pub use status::{JobStatus, MigrationEvent, MigrationStatus};

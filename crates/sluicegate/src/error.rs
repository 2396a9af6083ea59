//! Typed errors of the library: what went wrong, and while doing what.

use crate::failure::{self, Blame};
use crate::status::{IllegalJobTransition, JobStatus, MigrationStatus, UnknownName};

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in Sluicegate's library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database URL could not be understood.
    #[error("invalid database URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given, with any password masked.
        url: String,
        /// Why it was refused.
        reason: String,
    },

    /// A query or connection failed.
    #[error("database error while {context}: {source}")]
    Database {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// The tracking tables are missing: `setup` has not been run.
    #[error("the tracking schema is not installed (run `sluicegate setup` first)")]
    SchemaMissing,

    /// The tracking schema was installed by a newer version of Sluicegate.
    #[error("the tracking schema is at version {found}, newer than this binary's {supported}: upgrade sluicegate")]
    SchemaTooNew {
        /// Version found in the database.
        found: i64,
        /// Newest version this binary knows.
        supported: i64,
    },

    /// An identifier (table, column, schema) is unusable.
    #[error("invalid identifier {ident:?}: {reason}")]
    InvalidIdentifier {
        /// The identifier as given.
        ident: String,
        /// Why it was refused.
        reason: String,
    },

    /// The target table does not exist.
    #[error("unknown table {table:?}{hint}")]
    UnknownTable {
        /// The table as read.
        table: String,
        /// What was probably meant, or empty.
        hint: String,
    },

    /// The column does not exist on the target table.
    #[error("unknown column {column:?} in table {table:?}{hint}")]
    UnknownColumn {
        /// The table.
        table: String,
        /// The missing column.
        column: String,
        /// What was probably meant (` (did you mean "Id"? ...)`), or empty.
        hint: String,
    },

    /// A migration's settings are invalid (batch size 0, sub-batch larger than batch, ...).
    #[error("invalid migration settings: {0}")]
    InvalidSettings(String),

    /// The job kind named by a migration is not registered.
    #[error("unknown job kind {0:?}")]
    UnknownJobKind(String),

    /// A job kind's arguments are invalid, or its statement failed when tried at queue time.
    #[error("invalid {kind} migration: {reason}")]
    InvalidJob {
        /// The job kind.
        kind: String,
        /// What is wrong.
        reason: String,
    },

    /// A migration with this name (or this exact configuration) exists already.
    #[error("{0}")]
    DuplicateMigration(String),

    /// A definition differs from the one a live migration of its name was queued from
    /// (`apply`, `queue --if-not-exists`).
    #[error("migration {id} ({name:?}, {status}) was queued from another definition: {}; change a queued migration with `sluicegate set`, or cancel it first", differences.join("; "))]
    DefinitionChanged {
        /// The name.
        name: String,
        /// The migration queued under it.
        id: i64,
        /// Its status.
        status: MigrationStatus,
        /// Each setting that differs, `field: stored -> given`.
        differences: Vec<String>,
    },

    /// A definition (a file of `apply`, a pair of
    /// [`Sluicegate::apply_definitions`](crate::Sluicegate::apply_definitions)) does not read:
    /// which, and why.
    #[error("{0}")]
    InvalidDefinition(String),

    /// No migration has this id or name.
    #[error("no migration {0:?}")]
    MigrationNotFound(String),

    /// No job has this id.
    #[error("no job {0}")]
    JobNotFound(i64),

    /// A job status change the state machine forbids.
    #[error("illegal job transition {from} -> {to} for job {job_id}")]
    IllegalJobTransition {
        /// The job.
        job_id: i64,
        /// Its current status.
        from: JobStatus,
        /// The status asked for.
        to: JobStatus,
    },

    /// A migration status change the state machine forbids.
    #[error("cannot {event} migration {migration}: it is {from}")]
    IllegalMigrationTransition {
        /// The migration's name.
        migration: String,
        /// The operation asked for.
        event: String,
        /// Its current status.
        from: MigrationStatus,
    },

    /// The row was changed by someone else between read and write (its status or attempt
    /// moved on): the transition was not applied and nothing was written.
    #[error("{what} changed concurrently; nothing was written")]
    Conflict {
        /// What changed.
        what: String,
    },

    /// A stored value (a duration, a key) is past what the database or a timestamp can hold.
    #[error("value out of range: {0}")]
    OutOfRange(String),

    /// A stored value could not be read back (a status the enum does not know, bad JSON).
    #[error("corrupt tracking data: {0}")]
    Corrupt(String),

    /// An operator's reason (pause, resume, retry, cancel, set) is longer than
    /// [`crate::client::MAX_REASON_CHARS`]: it would be stored, and shown on every refresh.
    #[error("the reason is {chars} characters long; at most {max} are accepted")]
    ReasonTooLong {
        /// Its length in characters.
        chars: usize,
        /// The limit.
        max: usize,
    },

    /// `finalize` was stopped (a signal) before the migration ended.
    #[error("finalize of migration {migration} was stopped: its job is pending again at its cursor and its table is free; the migration stays finalizing, and `sluicegate run` (any worker) or `sluicegate finalize {migration}` finishes it")]
    Stopped {
        /// The migration's name.
        migration: String,
    },

    /// A migration could not be brought to an end by `finalize`.
    #[error("migration {migration} could not be finalized: {reason}")]
    FinalizeFailed {
        /// The migration's name.
        migration: String,
        /// Why.
        reason: String,
    },

    /// A migration of another database (or of an unknown one, queued before schema v5) was
    /// asked of a handle connected to this one: nothing was done.
    #[error("migration {migration} is for {target}; this is connected to {connected}{hint}")]
    WrongTarget {
        /// The migration's name.
        migration: String,
        /// Its target, as shown (`unknown` when queued before v5).
        target: String,
        /// The target this handle is connected to, as shown.
        connected: String,
        /// What to do about it.
        hint: String,
    },
}

impl Error {
    /// Whose the error is when met while working on one migration: only what is provably the
    /// connection's (back off, try again) or the tracking database's (stop) is kept from the
    /// migration; everything else is the migration's own (see [`failure::blame`]).
    pub fn blame(&self) -> Blame {
        match self {
            Error::Database { source, .. } => failure::blame(source),
            // Another worker changed the row meanwhile: look again.
            Error::Conflict { .. } => Blame::Connection,
            Error::SchemaMissing | Error::SchemaTooNew { .. } | Error::InvalidUrl { .. } => {
                Blame::Database
            }
            _ => Blame::Migration,
        }
    }

    /// Wraps a driver error with what was being done.
    pub(crate) fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
        let context = context.into();
        move |source| Error::Database { context, source }
    }
}

impl From<IllegalJobTransition> for Error {
    fn from(e: IllegalJobTransition) -> Self {
        Error::IllegalJobTransition {
            job_id: e.job_id,
            from: e.from,
            to: e.to,
        }
    }
}

impl From<UnknownName> for Error {
    fn from(e: UnknownName) -> Self {
        Error::Corrupt(e.to_string())
    }
}

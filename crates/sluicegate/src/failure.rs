//! Why a job failed: a stable exception class and a message, capped as GitLab caps them
//! (class ≤ 100 characters, message ≤ 1,000), truncated and never dropped.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest exception class stored (GitLab's cap).
pub const MAX_CLASS_CHARS: usize = 100;
/// Longest exception message stored (GitLab's cap).
pub const MAX_MESSAGE_CHARS: usize = 1_000;

/// The failure classes Sluicegate itself names or acts on. Their names are stable: they are
/// what the transition logs hold. Job kinds and the database add classes of their own (a
/// [`Failure`]'s class is text), such as `UniqueViolation` or a kind's `SimulatedFault`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureClass {
    /// `statement_timeout` ran out (SQLSTATE 57014): shrinks the sub-batch, splits the job.
    StatementTimeout,
    /// `lock_timeout` ran out (55P03): shrinks the sub-batch, splits the job.
    LockTimeout,
    /// The connection to the database is gone: the worker backs off and retries.
    ConnectionLost,
    /// SQLite is busy: the worker backs off and retries.
    DatabaseBusy,
    /// SQLite's database is locked: the worker backs off and retries.
    DatabaseLocked,
    /// A job's worker stopped renewing its lease.
    WorkerLost,
    /// The job kind panicked.
    Panic,
    /// A migration ended with jobs that failed all their attempts.
    JobsFailed,
    /// More than half of at least 50 jobs failed (GitLab's rule).
    TooManyFailedJobs,
    /// No worker knows the migration's job kind.
    UnknownJobKind,
    /// A stored value is past what the database or a timestamp can hold.
    OutOfRange,
    /// A stored setting is not valid.
    InvalidSettings,
    /// Tracking data could not be read back.
    Corrupt,
    /// The worker running the job was stopped (SIGTERM, SIGINT) at a sub-batch boundary;
    /// the job resumes from its cursor.
    Interrupted,
    /// Sluicegate misused its own storage layer (a bug).
    Internal,
    /// A built-in kind's sub-batch on a unique key reported more rows than it has keys: its
    /// statement reached rows outside the sub-batch. Rolled back; fails the migration.
    RangeEscaped,
    /// A lane's shard is no longer on the node its job wrote to (a shard move or rebalance):
    /// rolled back; the job is handed back and resumes on the shard's new node.
    ShardMoved,
    /// A lane's node cannot be reached: the job is handed back and the node's lanes held
    /// while the other lanes go on.
    NodeDown,
    /// The migration's `--verify` condition does not hold for every row of its range after
    /// its last job (rows changed behind its back, or a statement that does not do what the
    /// condition says).
    VerificationFailed,
}

impl FailureClass {
    /// Its stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StatementTimeout => "StatementTimeout",
            Self::LockTimeout => "LockTimeout",
            Self::ConnectionLost => "ConnectionLost",
            Self::DatabaseBusy => "DatabaseBusy",
            Self::DatabaseLocked => "DatabaseLocked",
            Self::WorkerLost => "WorkerLost",
            Self::Panic => "Panic",
            Self::JobsFailed => "JobsFailed",
            Self::TooManyFailedJobs => "TooManyFailedJobs",
            Self::UnknownJobKind => "UnknownJobKind",
            Self::OutOfRange => "OutOfRange",
            Self::InvalidSettings => "InvalidSettings",
            Self::Corrupt => "Corrupt",
            Self::Interrupted => "Interrupted",
            Self::Internal => "Internal",
            Self::RangeEscaped => "RangeEscaped",
            Self::ShardMoved => "ShardMoved",
            Self::NodeDown => "NodeDown",
            Self::VerificationFailed => "VerificationFailed",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<FailureClass> for String {
    fn from(class: FailureClass) -> Self {
        class.as_str().to_owned()
    }
}

/// A failure as recorded in a transition log: a stable class (`StatementTimeout`,
/// `LockTimeout`, `UniqueViolation`, `Panic`, `WorkerLost`, `ConnectionLost`, ...) and a message.
///
/// Job kinds return it from [`JobKind::perform`](crate::JobKind::perform); a [`sqlx::Error`]
/// converts into it with its class taken from the SQLSTATE or SQLite result code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Stable name of the kind of failure.
    pub class: String,
    /// What happened, in words.
    pub message: String,
}

impl Failure {
    /// A failure of class `class`; both parts are truncated to their caps.
    pub fn new(class: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class: truncate(class.into(), MAX_CLASS_CHARS),
            message: truncate(message.into(), MAX_MESSAGE_CHARS),
        }
    }

    /// Whether its class is `class`.
    pub fn is(&self, class: FailureClass) -> bool {
        self.class == class.as_str()
    }

    /// Whether the failure is a statement or lock timeout (which shrinks and splits jobs).
    pub fn is_timeout(&self) -> bool {
        self.is(FailureClass::StatementTimeout) || self.is(FailureClass::LockTimeout)
    }

    /// Whether the failure means the database connection is gone.
    pub fn is_connection_lost(&self) -> bool {
        self.is(FailureClass::ConnectionLost)
    }

    /// Whether waiting and trying again is the answer: the connection is gone, or SQLite is
    /// busy or locked.
    pub fn is_transient(&self) -> bool {
        self.is_connection_lost()
            || self.is(FailureClass::DatabaseBusy)
            || self.is(FailureClass::DatabaseLocked)
    }

    /// Classifies a driver error.
    pub fn from_sqlx(err: &sqlx::Error) -> Self {
        use sqlx::Error as E;
        let class = match err {
            // SQLite says "no such table" and the like with its one generic code (1): the
            // class names what it said (ownership never depends on it: see [`blame`]).
            E::Database(db) if db.code().as_deref() == Some("1") => {
                let said = db.message();
                match ["table", "column", "function"]
                    .into_iter()
                    .find(|what| said.starts_with(&format!("no such {what}")))
                {
                    Some("table") => "UndefinedTable".to_owned(),
                    Some("column") => "UndefinedColumn".to_owned(),
                    Some(_) => "UndefinedFunction".to_owned(),
                    None => "SqlError".to_owned(),
                }
            }
            E::Database(db) => db
                .code()
                .map(|code| classify_code(&code))
                .unwrap_or_else(|| "DatabaseError".to_owned()),
            E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
                "ConnectionLost".to_owned()
            }
            E::Protocol(_) => "ProtocolError".to_owned(),
            E::RowNotFound => "RowNotFound".to_owned(),
            E::ColumnDecode { .. } | E::Decode(_) | E::ColumnNotFound(_) => {
                "DecodeError".to_owned()
            }
            _ => "DatabaseError".to_owned(),
        };
        let message = match err {
            // The server's own words, without sqlx's "error returned from database:" prefix.
            E::Database(db) => db.message().to_owned(),
            other => other.to_string(),
        };
        Self::new(class, message)
    }
}

impl From<sqlx::Error> for Failure {
    fn from(err: sqlx::Error) -> Self {
        Self::from_sqlx(&err)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

impl std::error::Error for Failure {}

/// Whose a driver error met while working on one migration is (see [`blame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The connection or the server for now (lost, refused, shut down, out of resources,
    /// busy, a deadlock or serialization failure): the worker backs off and tries again.
    Connection,
    /// The tracking database itself cannot be used (a corrupt or read-only file, a read-only
    /// server, authorization gone, an internal error): the worker stops.
    Database,
    /// Anything else: the migration's own (its SQL, its data, its table, its key, its
    /// timeouts), recorded on it; the worker goes on with other migrations.
    Migration,
}

/// Whose `err` is, decided by the driver's error variant and the SQLSTATE class or SQLite
/// primary result code (typed), never by message text. A small deny-list: only what is
/// provably the connection's or the tracking database's is kept from the migration. (That
/// the tracking schema is gone shows when the migration's failure cannot be recorded.)
pub fn blame(err: &sqlx::Error) -> Blame {
    use sqlx::Error as E;
    match err {
        E::Io(_)
        | E::Tls(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::Protocol(_) => Blame::Connection,
        E::Configuration(_) => Blame::Database,
        E::Database(db) => db.code().map_or(Blame::Migration, |code| blame_code(&code)),
        _ => Blame::Migration,
    }
}

/// [`blame`] for a PostgreSQL SQLSTATE (five characters) or a SQLite extended result code.
fn blame_code(code: &str) -> Blame {
    // A SQLSTATE is five characters; SQLite's extended result codes stay under 10,000.
    if let Some(sqlite) = code.parse::<i64>().ok().filter(|_| code.len() < 5) {
        // SQLite: the primary code is the low byte of the extended one.
        return match sqlite & 0xff {
            // BUSY, LOCKED
            5 | 6 => Blame::Connection,
            // NOMEM, IOERR, FULL, CANTOPEN, PROTOCOL
            7 | 10 | 13 | 14 | 15 => Blame::Connection,
            // PERM, READONLY, CORRUPT, NOTADB
            3 | 8 | 11 | 26 => Blame::Database,
            _ => Blame::Migration,
        };
    }
    let class = code.get(..2).unwrap_or(code);
    match (class, code) {
        // connection exception; insufficient resources (disk full, out of memory, too many
        // connections); operator intervention that ends sessions (admin or crash shutdown,
        // cannot connect now, database dropped, idle session timeout); system error (I/O);
        // transaction rollback (deadlock, serialization failure): try again later.
        ("08" | "53" | "58" | "40", _) => Blame::Connection,
        ("57", "57P01" | "57P02" | "57P03" | "57P04" | "57P05") => Blame::Connection,
        // a read-only transaction (a standby after a failover), authorization gone, the
        // database gone, an internal error or corruption.
        (_, "25006") | ("28" | "3D" | "XX", _) => Blame::Database,
        _ => Blame::Migration,
    }
}

/// Maps a PostgreSQL SQLSTATE or a SQLite (extended) result code to a class name.
fn classify_code(code: &str) -> String {
    let known = match code {
        // PostgreSQL SQLSTATEs.
        "57014" => "StatementTimeout",
        "55P03" => "LockTimeout",
        "23505" => "UniqueViolation",
        "23503" => "ForeignKeyViolation",
        "23502" => "NotNullViolation",
        "23514" => "CheckViolation",
        "40P01" => "DeadlockDetected",
        "40001" => "SerializationFailure",
        "42P01" => "UndefinedTable",
        "42703" => "UndefinedColumn",
        "42601" => "SyntaxError",
        "42883" => "UndefinedFunction",
        "42804" => "DatatypeMismatch",
        "57P01" | "57P02" | "57P03" => "ConnectionLost",
        "P0001" => "RaiseException",
        // SQLite extended result codes.
        "5" | "261" | "517" => "DatabaseBusy",
        "6" | "262" => "DatabaseLocked",
        "2067" | "1555" => "UniqueViolation",
        "1299" => "NotNullViolation",
        "275" => "CheckViolation",
        "787" => "ForeignKeyViolation",
        "1" => "SqlError",
        "1811" => "TriggerAbort",
        _ if code.starts_with("08") => "ConnectionLost",
        _ if code.starts_with("22") => "DataException",
        _ if code.starts_with("42") => "SyntaxOrAccessRuleViolation",
        _ => return format!("DatabaseError{code}"),
    };
    known.to_owned()
}

/// Cuts `s` to at most `max` characters, marking the cut with an ellipsis.
fn truncate(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        return s;
    }
    let mut cut: String = s.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_class_and_message_by_characters() {
        let f = Failure::new("C".repeat(150), "é".repeat(5_000));
        assert_eq!(f.class.chars().count(), MAX_CLASS_CHARS);
        assert_eq!(f.message.chars().count(), MAX_MESSAGE_CHARS);
        assert!(f.message.ends_with('…'));
        let short = Failure::new("Panic", "boom");
        assert_eq!(short.message, "boom");
    }

    #[test]
    fn classifies_known_codes() {
        assert_eq!(classify_code("57014"), "StatementTimeout");
        assert_eq!(classify_code("55P03"), "LockTimeout");
        assert_eq!(classify_code("08006"), "ConnectionLost");
        assert_eq!(classify_code("2067"), "UniqueViolation");
        assert_eq!(classify_code("XX000"), "DatabaseErrorXX000");
    }

    #[test]
    fn blames_only_the_connection_and_the_database_by_code() {
        for code in [
            "08006", "08001", "53100", "53200", "57P01", "57P03", "40P01", "5", "517", "13", "266",
        ] {
            assert_eq!(blame_code(code), Blame::Connection, "{code}");
        }
        for code in ["25006", "28P01", "3D000", "XX001", "11", "8", "26"] {
            assert_eq!(blame_code(code), Blame::Database, "{code}");
        }
        // A column whose type changed, a dropped function, a statement timeout, a bad cast,
        // a missing table or column, SQLite's generic error and a constraint: the migration's.
        for code in [
            "42883", "42P01", "42703", "57014", "55P03", "22P02", "23505", "1", "19", "2067",
        ] {
            assert_eq!(blame_code(code), Blame::Migration, "{code}");
        }
        assert_eq!(blame(&sqlx::Error::PoolTimedOut), Blame::Connection);
        assert_eq!(
            blame(&sqlx::Error::Decode("a key read by the walk: [1.5]".into())),
            Blame::Migration
        );
    }
}

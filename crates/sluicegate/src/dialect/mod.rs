//! The SQL dialects Sluicegate speaks: which engine ([`Backend`]) and the shapes of a key's SQL
//! that both write the same way ([`key_sql`]). The lowest layer of SQL: the store, the job
//! kinds and the fragment parser all use it, and it uses none of them.

pub(crate) mod key_sql;

/// Which database engine a store or target talks to: the dialect to parse and write SQL in.
/// What an engine can do is asked of [`Capabilities`](crate::store::Capabilities) instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL, the production engine.
    Postgres,
    /// SQLite, the embedded default.
    Sqlite,
}

//! The reads of the tracking tables that are the same on both backends, written once: a
//! migration or a job by id, the lists, the logs. Their SQL names the tracking tables
//! `{s}.migrations`, `{s}.jobs`, ...; each backend says how it spells them (PostgreSQL: its
//! schema, SQLite: the `sluicegate_` prefix) and runs a read with its arguments bound.

use async_trait::async_trait;

use super::rows::{self, ModelRow};
use crate::error::{Error, Result};
use crate::model::{Job, JobTransition, Migration, MigrationTransition};
use crate::status::JobStatus;

const MIGRATION_GET: &str = "SELECT * FROM {s}.migrations WHERE id = $1";
const MIGRATION_GET_BY_NAME: &str = "SELECT * FROM {s}.migrations WHERE name = $1
    ORDER BY id DESC LIMIT 1";
const MIGRATION_LIST: &str = "SELECT * FROM {s}.migrations ORDER BY id";
const JOB_GET: &str = "SELECT * FROM {s}.jobs WHERE id = $1";
const JOB_LIST: &str = "SELECT * FROM {s}.jobs
    WHERE migration_id = $1 AND (CAST($2 AS text) IS NULL OR status = $2)
    ORDER BY id";
const JOB_RECENT_SUCCEEDED: &str =
    "SELECT * FROM {s}.jobs WHERE migration_id = $1 AND status = 'succeeded'
    ORDER BY finished_at DESC, id DESC LIMIT $2";
const JOB_TRANSITION_LIST: &str =
    "SELECT * FROM {s}.job_transition_logs WHERE job_id = $1 ORDER BY created_at, id";
const JOB_TRANSITION_LIST_BY_MIGRATION: &str =
    "SELECT * FROM {s}.job_transition_logs WHERE migration_id = $1 ORDER BY created_at, id";
const MIGRATION_TRANSITION_LIST: &str =
    "SELECT * FROM {s}.migration_transition_logs WHERE migration_id = $1 ORDER BY created_at, id";

/// A value bound to a shared read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    /// An integer (an id, a limit).
    Int(i64),
    /// A text, or NULL.
    Text(Option<&'a str>),
}

/// What a backend gives the shared reads.
#[async_trait]
pub(crate) trait Reads: Send + Sync {
    /// A row of its driver.
    type Row: ModelRow + Send;
    /// `sql` with the tracking tables (`{s}.name`) spelled as this backend names them.
    fn tables(&self, sql: &str) -> String;
    /// Runs a read, `args` bound as `$1, $2, ...`.
    async fn fetch(&self, sql: &str, args: &[Arg<'_>]) -> sqlx::Result<Vec<Self::Row>>;
    /// Whether `e` says the tracking tables are not there (no schema installed).
    fn is_missing_table(e: &sqlx::Error) -> bool;
}

async fn fetch<R: Reads>(
    r: &R,
    sql: &str,
    args: &[Arg<'_>],
    context: impl FnOnce() -> String,
) -> Result<Vec<R::Row>> {
    r.fetch(&r.tables(sql), args)
        .await
        .map_err(|e| Error::db(context())(e))
}

/// [`Store::migration_get`](super::Store::migration_get).
pub(crate) async fn migration_get<R: Reads>(r: &R, id: i64) -> Result<Option<Migration>> {
    let args = [Arg::Int(id)];
    let found = fetch(r, MIGRATION_GET, &args, || {
        format!("reading migration {id}")
    });
    found.await?.first().map(rows::migration).transpose()
}

/// [`Store::migration_get_by_name`](super::Store::migration_get_by_name).
pub(crate) async fn migration_get_by_name<R: Reads>(
    r: &R,
    name: &str,
) -> Result<Option<Migration>> {
    let args = [Arg::Text(Some(name))];
    let found = fetch(r, MIGRATION_GET_BY_NAME, &args, || {
        format!("reading migration {name:?}")
    });
    found.await?.first().map(rows::migration).transpose()
}

/// [`Store::migration_list`](super::Store::migration_list): the schema missing is said so.
pub(crate) async fn migration_list<R: Reads>(r: &R) -> Result<Vec<Migration>> {
    let found = r.fetch(&r.tables(MIGRATION_LIST), &[]).await.map_err(|e| {
        if R::is_missing_table(&e) {
            Error::SchemaMissing
        } else {
            Error::db("listing migrations")(e)
        }
    })?;
    found.iter().map(rows::migration).collect()
}

/// [`Store::job_get`](super::Store::job_get).
pub(crate) async fn job_get<R: Reads>(r: &R, id: i64) -> Result<Option<Job>> {
    let args = [Arg::Int(id)];
    let found = fetch(r, JOB_GET, &args, || format!("reading job {id}"));
    found.await?.first().map(rows::job).transpose()
}

/// [`Store::job_list`](super::Store::job_list).
pub(crate) async fn job_list<R: Reads>(
    r: &R,
    migration_id: i64,
    status: Option<JobStatus>,
) -> Result<Vec<Job>> {
    let args = [
        Arg::Int(migration_id),
        Arg::Text(status.map(JobStatus::as_str)),
    ];
    let found = fetch(r, JOB_LIST, &args, || {
        format!("listing jobs of migration {migration_id}")
    });
    found.await?.iter().map(rows::job).collect()
}

/// [`Store::job_recent_succeeded`](super::Store::job_recent_succeeded).
pub(crate) async fn job_recent_succeeded<R: Reads>(
    r: &R,
    migration_id: i64,
    limit: i64,
) -> Result<Vec<Job>> {
    let args = [Arg::Int(migration_id), Arg::Int(limit)];
    let found = fetch(r, JOB_RECENT_SUCCEEDED, &args, || {
        "reading recent jobs".to_owned()
    });
    found.await?.iter().map(rows::job).collect()
}

/// [`Store::job_transition_list`](super::Store::job_transition_list).
pub(crate) async fn job_transition_list<R: Reads>(
    r: &R,
    job_id: i64,
) -> Result<Vec<JobTransition>> {
    let args = [Arg::Int(job_id)];
    let found = fetch(r, JOB_TRANSITION_LIST, &args, || {
        format!("reading the history of job {job_id}")
    });
    found.await?.iter().map(rows::job_transition).collect()
}

/// [`Store::job_transition_list_by_migration`](super::Store::job_transition_list_by_migration).
pub(crate) async fn job_transition_list_by_migration<R: Reads>(
    r: &R,
    migration_id: i64,
) -> Result<Vec<JobTransition>> {
    let args = [Arg::Int(migration_id)];
    let found = fetch(r, JOB_TRANSITION_LIST_BY_MIGRATION, &args, || {
        format!("reading job history of migration {migration_id}")
    });
    found.await?.iter().map(rows::job_transition).collect()
}

/// [`Store::migration_transition_list`](super::Store::migration_transition_list).
pub(crate) async fn migration_transition_list<R: Reads>(
    r: &R,
    migration_id: i64,
) -> Result<Vec<MigrationTransition>> {
    let args = [Arg::Int(migration_id)];
    let found = fetch(r, MIGRATION_TRANSITION_LIST, &args, || {
        format!("reading the history of migration {migration_id}")
    });
    found
        .await?
        .iter()
        .map(rows::migration_transition)
        .collect()
}

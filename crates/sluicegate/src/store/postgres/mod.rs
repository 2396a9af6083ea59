//! PostgreSQL: the tracking store ([`PgStore`], its tables in their own schema, `sluicegate`
//! by default) and the table being migrated ([`PgTarget`]), by concern: the schema
//! ([`schema`]), the migrations and their table leases ([`migrations`]), the jobs ([`jobs`]),
//! the job log's partitions ([`logs`]), the target ([`target`]): its key ([`key`]), the
//! keyset walk ([`walk`]), its health ([`health`]) and sub-batches ([`sub_batch`]). Each
//! statement lives beside the code that runs it. A change and its log row are one statement
//! (data-modifying CTEs), which is why the multi-step primitives are written here and not once
//! for both backends.

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::PgConnection;

use crate::error::Result;
use crate::ident;
use crate::model::TargetIdentity;
use crate::store::reads::{Arg, Reads};
use crate::store::Capabilities;

mod citus;
mod health;
mod jobs;
mod key;
mod lanes;
mod logs;
mod migrations;
mod schema;
mod sub_batch;
mod target;
mod verify;
mod walk;
mod work;

pub use logs::partition_name;
pub use target::PgTarget;

/// Our sessions' own settings, put back after a value is parsed under the database's.
pub(crate) const SESSION_SETTINGS: &str = "SET DateStyle = 'ISO, MDY'; SET TimeZone = 'UTC'";

/// The tracking store on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    schema: String,
    quoted_schema: String,
    /// The target whose migrations this store's claims hand out (none without one).
    target: Option<TargetIdentity>,
}

impl PgStore {
    /// A store whose tables live in `schema`.
    pub fn new(pool: PgPool, schema: &str) -> Result<Self> {
        ident::validate(schema)?;
        Ok(Self {
            pool,
            schema: schema.to_owned(),
            quoted_schema: ident::quote(schema),
            target: None,
        })
    }

    /// The same store, claiming the migrations of `target` only (without one it claims none).
    pub fn for_target(mut self, target: TargetIdentity) -> Self {
        self.target = Some(target);
        self
    }

    /// The pool it uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A statement with the schema filled in.
    fn q(&self, template: &str) -> String {
        template.replace("{s}", &self.quoted_schema)
    }
}

store_by_concern!(
    PgStore,
    crate::dialect::Backend::Postgres,
    Capabilities::POSTGRES
);

#[async_trait]
impl Reads for PgStore {
    type Row = PgRow;

    fn tables(&self, sql: &str) -> String {
        self.q(sql)
    }

    async fn fetch(&self, sql: &str, args: &[Arg<'_>]) -> sqlx::Result<Vec<PgRow>> {
        let mut query = sqlx::query(sql);
        for arg in args {
            query = match *arg {
                Arg::Int(v) => query.bind(v),
                Arg::Text(t) => query.bind(t),
            };
        }
        query.fetch_all(&self.pool).await
    }

    fn is_missing_table(e: &sqlx::Error) -> bool {
        is_undefined_table(e)
    }
}

/// An undefined table or schema: the tracking schema is not installed.
fn is_undefined_table(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") || db.code().as_deref() == Some("3F000"))
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// Runs one or more statements with no parameters (DDL). A plain function, not a trait
/// method, so the borrow of the connection does not leak into the trait's `Send` analysis.
async fn exec_raw(conn: &mut PgConnection, sql: &str) -> std::result::Result<(), sqlx::Error> {
    sqlx::Executor::execute(conn, sql).await.map(|_| ())
}

//! Test support (feature `testing`): a fresh database per test, on PostgreSQL or SQLite, and
//! the `store_test!` macro that runs one test body on both.
//!
//! PostgreSQL tests need `SLUICEGATE_TEST_PG_URL` (an admin URL, e.g.
//! `postgres://postgres@127.0.0.1:54329/postgres`); `scripts/test` starts a throwaway cluster
//! and sets it. Each test gets its own database, dropped when the [`TestDb`] is dropped.

use std::str::FromStr;

use rand::Rng;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{PgPool, SqlitePool};

use crate::client::{ConnectOptions, Sluicegate};
use crate::kind::Registry;
use crate::store::Backend;

/// Runs one async test body on PostgreSQL and on SQLite, each with its own fresh database
/// bound to `$db` (a [`TestDb`]).
#[macro_export]
macro_rules! store_test {
    ($name:ident, |$db:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
                let $db = $crate::testing::TestDb::postgres().await;
                $body
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let $db = $crate::testing::TestDb::sqlite().await;
                $body
            }
        }
    };
}

/// Returns from a PostgreSQL test when `$var` (the server's admin URL) is not set, saying so
/// on stderr, so that a plain `cargo test` runs the SQLite half. `scripts/test` sets
/// `SLUICEGATE_REQUIRE_PG`, and then a missing server fails the test instead.
#[macro_export]
macro_rules! skip_without_postgres {
    ($var:literal) => {
        if !$crate::testing::postgres_configured($var) {
            return;
        }
    };
}

/// Whether the PostgreSQL server named by `var` is configured; when it is not and
/// `SLUICEGATE_REQUIRE_PG` is unset, prints that the test is skipped.
pub fn postgres_configured(var: &str) -> bool {
    if std::env::var_os(var).is_some() {
        return true;
    }
    assert!(
        std::env::var_os("SLUICEGATE_REQUIRE_PG").is_none(),
        "{var} is not set, and SLUICEGATE_REQUIRE_PG says PostgreSQL is required: run scripts/test"
    );
    eprintln!("SKIPPED (PostgreSQL half): {var} is not set; scripts/test starts the servers");
    false
}

/// Direct access to a test database, for setting up and checking target tables.
#[derive(Debug, Clone)]
pub enum RawPool {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

/// A fresh database for one test; dropped (PostgreSQL) or deleted (SQLite) afterwards.
#[derive(Debug)]
pub struct TestDb {
    /// Which engine.
    pub backend: Backend,
    /// URL of the fresh database.
    pub url: String,
    /// A pool on it.
    pub pool: RawPool,
    admin_url: Option<String>,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

fn random_suffix() -> String {
    let mut rng = rand::thread_rng();
    (0..12)
        .map(|_| (b'a' + rng.gen_range(0..26)) as char)
        .collect()
}

/// The admin URL of the test PostgreSQL server.
pub fn pg_admin_url() -> String {
    std::env::var("SLUICEGATE_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "SLUICEGATE_TEST_PG_URL is not set: run the tests with scripts/test, which starts a \
             PostgreSQL cluster, or point it at a server where you may create databases"
        )
    })
}

/// An environment variable `scripts/test` sets, or a panic saying so.
pub fn require_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test, which starts the servers they need")
    })
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl TestDb {
    /// A new empty PostgreSQL database.
    pub async fn postgres() -> Self {
        Self::postgres_on(pg_admin_url()).await
    }

    /// A new empty PostgreSQL database on the health-test primary
    /// (`SLUICEGATE_TEST_HEALTH_PG_URL`: archiving, fast autovacuum, a streaming replica).
    pub async fn postgres_health() -> Self {
        Self::postgres_on(require_env("SLUICEGATE_TEST_HEALTH_PG_URL")).await
    }

    /// A new empty PostgreSQL database on the server of `admin_url`.
    pub async fn postgres_on(admin_url: String) -> Self {
        let name = format!("sg_test_{}", random_suffix());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin_url)
            .await
            .expect("connect to the test PostgreSQL server");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create the test database");
        admin.close().await;
        let url = with_database(&admin_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect_with(PgConnectOptions::from_str(&url).expect("url"))
            .await
            .expect("connect to the test database");
        Self {
            backend: Backend::Postgres,
            url,
            pool: RawPool::Postgres(pool),
            admin_url: Some(admin_url),
            name,
            _dir: None,
        }
    }

    /// A new empty SQLite file in a temporary directory.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("test.db");
        let url = format!("sqlite://{}", path.display());
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
            .expect("url")
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .expect("open the test SQLite file");
        Self {
            backend: Backend::Sqlite,
            url,
            pool: RawPool::Sqlite(pool),
            admin_url: None,
            name: path.display().to_string(),
            _dir: Some(dir),
        }
    }

    /// A connected handle with the schema installed and the built-in kinds.
    pub async fn sluicegate(&self) -> Sluicegate {
        self.sluicegate_with(Registry::default()).await
    }

    /// A connected handle with the schema installed and the given kinds.
    pub async fn sluicegate_with(&self, registry: Registry) -> Sluicegate {
        let mut opts = ConnectOptions::new(&self.url);
        opts.registry = registry;
        opts.max_connections = 8;
        let sg = Sluicegate::connect_with(opts).await.expect("connect");
        sg.setup().await.expect("setup");
        sg
    }

    /// Runs one statement (or, on SQLite, a script).
    pub async fn exec(&self, sql: &str) {
        self.try_exec(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Runs one statement, returning the driver's error.
    pub async fn try_exec(&self, sql: &str) -> Result<u64, sqlx::Error> {
        Ok(match &self.pool {
            RawPool::Postgres(p) => sqlx::Executor::execute(p, sql).await?.rows_affected(),
            RawPool::Sqlite(p) => sqlx::Executor::execute(p, sql).await?.rows_affected(),
        })
    }

    /// The single integer a query returns (`NULL` reads as 0).
    pub async fn scalar(&self, sql: &str) -> i64 {
        let v: Option<i64> = match &self.pool {
            RawPool::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
            RawPool::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
        v.unwrap_or(0)
    }

    /// Creates `name (id bigint primary key, n integer default 0, email text, email_lower
    /// text)` holding one row per key in each inclusive range.
    pub async fn create_items(&self, name: &str, ranges: &[(i64, i64)]) {
        let q = crate::ident::quote(name);
        self.exec(&format!(
            "CREATE TABLE {q} (id bigint PRIMARY KEY, n integer NOT NULL DEFAULT 0, email text, email_lower text)"
        ))
        .await;
        for (lo, hi) in ranges {
            let sql = match self.backend {
                Backend::Postgres => format!(
                    "INSERT INTO {q} (id, email) SELECT g, 'User' || g || '@Example.COM' FROM generate_series({lo}::bigint, {hi}::bigint) g"
                ),
                Backend::Sqlite => format!(
                    "WITH RECURSIVE s(g) AS (SELECT {lo} UNION ALL SELECT g + 1 FROM s WHERE g < {hi}) \
                     INSERT INTO {q} (id, email) SELECT g, 'User' || g || '@Example.COM' FROM s"
                ),
            };
            self.exec(&sql).await;
        }
        if self.backend == Backend::Postgres {
            self.exec(&format!("ANALYZE {q}")).await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(admin_url) = self.admin_url.take() else {
            return;
        };
        if let RawPool::Postgres(pool) = &self.pool {
            pool.close_event();
        }
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot block on itself: use a thread
        // with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let admin = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&admin_url)
                    .await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&admin)
                    .await?;
                admin.close().await;
                Ok::<_, sqlx::Error>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

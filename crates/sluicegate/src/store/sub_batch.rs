//! Running a sub-batch, written once for both backends: find its keys (the keyset walk, or the
//! whole rest of a job), perform the kind on them in the open transaction, check its reach,
//! and walk again once when it escaped; or only walk (`range_next`), or perform and roll back
//! (`sub_batch_try`). Each backend gives the primitives: how a transaction begins, the walk's
//! SQL, the kind's connection and how a performed sub-batch commits.

use std::ops::DerefMut;

use async_trait::async_trait;
use sqlx::{Database, Transaction};

use super::params::DenseRange;
use super::{Backend, PerformedSubBatch, SubBatchSpec};
use crate::dialect::key_sql::{range_predicate, ParamSql};
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::ident::TableName;
use crate::key::{Key, KeySpec, Lower};
use crate::kind::{JobKind, SubBatch, SubBatchConnection};

/// What a walk goes over: the table, its key, the migration's scope.
pub(crate) type Walk<'a> = (&'a TableName, &'a KeySpec, Option<&'a str>);

/// A connection of backend `P`'s driver.
type Conn<P> = <<P as SubBatchPrimitives>::Db as Database>::Connection;

/// A sub-batch's open transaction, as a backend keeps it: the connection it runs on, and how
/// it is rolled back (committing is the backend's own, in [`PerformedSubBatch::commit`]).
#[async_trait]
pub(crate) trait OpenTransaction: DerefMut + Send + Sized {
    /// Rolls it back.
    async fn rollback(self) -> sqlx::Result<()>;
}

#[async_trait]
impl<DB: Database> OpenTransaction for Transaction<'static, DB> {
    async fn rollback(self) -> sqlx::Result<()> {
        Transaction::rollback(self).await
    }
}

/// What a backend gives the shared sub-batch code.
#[async_trait]
pub(crate) trait SubBatchPrimitives: Send + Sync {
    /// Its driver.
    type Db: Database;
    /// A sub-batch's open transaction.
    type Tx: OpenTransaction + DerefMut<Target = Conn<Self>>;
    /// Its dialect.
    const BACKEND: Backend;
    /// How it writes a bound key value.
    const PARAM: ParamSql;
    /// Opens a sub-batch's transaction (PostgreSQL: under its timeouts; SQLite: `BEGIN
    /// IMMEDIATE`, which takes the write lock up front).
    async fn begin_sub_batch(&self, spec: &SubBatchSpec<'_>) -> sqlx::Result<Self::Tx>;
    /// In the open sub-batch transaction, before anything else: what must hold for the
    /// sub-batch to write here at all (a Citus shard's placement still on this node).
    async fn guard(
        _conn: &mut Conn<Self>,
        _spec: &SubBatchSpec<'_>,
    ) -> std::result::Result<(), Failure> {
        Ok(())
    }
    /// Opens a read-only transaction for a walk, under `statement_ms` where there are
    /// statement timeouts.
    async fn begin_walk(&self, statement_ms: i64) -> sqlx::Result<Transaction<'static, Self::Db>>;
    /// The keyset walk: the first existing key from `lower` and the `size`-th one (or the
    /// last `<= max`), `None` when there is none.
    async fn walk(
        conn: &mut Conn<Self>,
        walk: Walk<'_>,
        lower: &Lower,
        max: &Key,
        size: i64,
    ) -> sqlx::Result<Option<(Key, Key)>>;
    /// The kind's handle on the open transaction.
    fn connection(conn: &mut Conn<Self>) -> SubBatchConnection<'_>;
    /// A sub-batch performed in `tx`, still open, that commits as the engine says.
    fn performed(&self, tx: Self::Tx, keys: (Key, Key), rows: u64) -> Box<dyn PerformedSubBatch>;
}

/// [`Target::range_next`](super::Target::range_next): the walk alone, read-only, rolled back.
pub(crate) async fn range_next<P: SubBatchPrimitives>(
    p: &P,
    walk: Walk<'_>,
    (lower, max, size): (&Lower, &Key, i64),
    statement_ms: i64,
) -> Result<Option<(Key, Key)>> {
    let context = "finding the next key range";
    let mut tx = p
        .begin_walk(statement_ms)
        .await
        .map_err(Error::db(context))?;
    let found = P::walk(&mut tx, walk, lower, max, size)
        .await
        .map_err(Error::db(format!("{context} of {}", walk.0.quoted())))?;
    let _ = tx.rollback().await;
    Ok(found)
}

/// [`Target::sub_batch_perform`](super::Target::sub_batch_perform): performed, its
/// transaction left open; walked and performed again once when it escaped its range (keys
/// inserted into the range since it was walked are the one innocent cause: walked again, the
/// sub-batch counts them; an escape repeats).
pub(crate) async fn perform<P: SubBatchPrimitives>(
    p: &P,
    mut spec: SubBatchSpec<'_>,
) -> std::result::Result<Option<Box<dyn PerformedSubBatch>>, Failure> {
    let mut tx = p.begin_sub_batch(&spec).await?;
    P::guard(&mut tx, &spec).await?;
    let mut performed = perform_in::<P>(&mut tx, &spec).await;
    if performed.as_ref().is_err_and(escaped) {
        tx.rollback().await?;
        spec.whole_rest = false;
        spec.dense = false;
        tx = p.begin_sub_batch(&spec).await?;
        P::guard(&mut tx, &spec).await?;
        performed = perform_in::<P>(&mut tx, &spec).await;
    }
    let Some((keys, rows)) = performed? else {
        tx.rollback().await?;
        return Ok(None);
    };
    Ok(Some(p.performed(tx, keys, rows)))
}

/// [`Target::sub_batch_try`](super::Target::sub_batch_try): performed and rolled back.
pub(crate) async fn try_rolled_back<P: SubBatchPrimitives>(
    p: &P,
    spec: SubBatchSpec<'_>,
) -> std::result::Result<super::TriedSubBatch, Failure> {
    let mut tx = p.begin_sub_batch(&spec).await?;
    P::guard(&mut tx, &spec).await?;
    let performed = perform_in::<P>(&mut tx, &spec).await;
    tx.rollback().await?;
    let (keys, rows) = match performed? {
        Some((keys, rows)) => (Some(keys), rows),
        None => (None, 0),
    };
    Ok(super::TriedSubBatch { keys, rows })
}

/// Inside the open transaction: finds the sub-batch's keys and performs the kind on them.
/// `None` when no key is left in range.
async fn perform_in<P: SubBatchPrimitives>(
    conn: &mut Conn<P>,
    spec: &SubBatchSpec<'_>,
) -> std::result::Result<Option<((Key, Key), u64)>, Failure> {
    let range = match (spec.whole_range(), spec.dense_range()) {
        (Some(whole), _) => Some(whole),
        (None, Some(DenseRange::Keys(start, end))) => Some((start, end)),
        (None, Some(DenseRange::Past)) => None,
        (None, None) => {
            let walk = (spec.table, spec.key, spec.scope);
            P::walk(conn, walk, spec.lower, spec.max, spec.size).await?
        }
    };
    let Some((start, end)) = range else {
        return Ok(None);
    };
    let predicate = range_predicate(spec.key, spec.scope, spec.table, None, P::PARAM);
    let mut batch = SubBatch {
        connection: P::connection(conn),
        table: spec.table,
        key: spec.key,
        scope: spec.scope,
        param: P::PARAM,
        predicate: &predicate,
        arguments: spec.arguments,
        start: &start,
        end: &end,
    };
    let rows = perform_catching_panics(spec.kind, &mut batch).await?;
    check_reach(spec, P::BACKEND, (&start, &end), rows)?;
    Ok(Some(((start, end), rows)))
}

/// The engine's own check of a sub-batch's reach: on a unique key, a kind whose rows are its
/// keys cannot report more rows than the sub-batch has keys (at most `spec.size`: the walk
/// counted them, and a whole rest of a job is no longer than one sub-batch). More means its
/// statement reached rows outside the range: a `RangeEscaped` failure, and the caller rolls
/// the sub-batch back.
fn check_reach(
    spec: &SubBatchSpec<'_>,
    backend: Backend,
    (start, end): (&Key, &Key),
    rows: u64,
) -> std::result::Result<(), Failure> {
    let most = spec.size.max(1) as u64;
    if spec.key_unique
        && rows > most
        && spec.kind.rows_are_keys(spec.arguments, backend, spec.table)
    {
        return Err(Failure::new(
            crate::failure::FailureClass::RangeEscaped,
            format!(
                "the sub-batch of keys {start} ..= {end} (at most {most} keys of a unique key) reported {rows} rows changed by kind {}: its statement reached rows outside the sub-batch; rolled back",
                spec.kind.name()
            ),
        ));
    }
    Ok(())
}

/// Whether a failure is the engine's refusal of a sub-batch that escaped its range.
fn escaped(failure: &Failure) -> bool {
    failure.is(crate::failure::FailureClass::RangeEscaped)
}

/// Runs `perform` on a sub-batch, turning a panic into a `Panic` failure.
async fn perform_catching_panics(
    kind: &dyn JobKind,
    batch: &mut SubBatch<'_>,
) -> std::result::Result<u64, Failure> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(kind.perform(batch))
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "job kind panicked".to_owned());
            Err(Failure::new(crate::failure::FailureClass::Panic, message))
        }
    }
}

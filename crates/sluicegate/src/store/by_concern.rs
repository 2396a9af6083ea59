//! The mapping of [`Store`](super::Store)'s primitives to a backend's concerns, written once
//! for both backends: each primitive is the function of the same name in the backend's
//! `schema`, `migrations`, `jobs` or `logs` module, or one of the shared [`reads`](super::reads)
//! (which the backend serves through [`Reads`](super::reads::Reads)). A macro rather than a
//! blanket implementation, which would make a crate-private trait part of the public one.

/// Implements [`Store`](crate::store::Store) for `$store` from the modules `schema`,
/// `migrations`, `jobs`, `logs` and `lanes` in scope where it is invoked.
macro_rules! store_by_concern {
    ($store:ty, $backend:expr, $capabilities:expr) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn backend(&self) -> $crate::store::Backend {
                $backend
            }
            fn capabilities(&self) -> $crate::store::Capabilities {
                $capabilities
            }
            async fn schema_install(&self) -> $crate::Result<Vec<i64>> {
                schema::install(self).await
            }
            async fn schema_version(&self) -> $crate::Result<Option<i64>> {
                schema::version(self).await
            }
            async fn migration_insert(
                &self,
                new: &$crate::model::NewMigration,
            ) -> $crate::Result<$crate::Migration> {
                migrations::insert(self, new).await
            }
            async fn migration_get(&self, id: i64) -> $crate::Result<Option<$crate::Migration>> {
                $crate::store::reads::migration_get(self, id).await
            }
            async fn migration_get_by_name(
                &self,
                name: &str,
            ) -> $crate::Result<Option<$crate::Migration>> {
                $crate::store::reads::migration_get_by_name(self, name).await
            }
            async fn migration_list(&self) -> $crate::Result<Vec<$crate::Migration>> {
                $crate::store::reads::migration_list(self).await
            }
            async fn migration_transition(
                &self,
                params: &$crate::store::MigrationTransitionParams,
            ) -> $crate::Result<$crate::Migration> {
                migrations::transition(self, params).await
            }
            async fn migration_retry(
                &self,
                params: &$crate::store::MigrationTransitionParams,
            ) -> $crate::Result<$crate::Migration> {
                migrations::retry(self, params).await
            }
            async fn migration_claim(
                &self,
                worker: &str,
                lease: std::time::Duration,
                only: Option<i64>,
            ) -> $crate::Result<Option<$crate::Migration>> {
                migrations::claim(self, worker, lease, only).await
            }
            async fn migration_claim_among(
                &self,
                worker: &str,
                lease: std::time::Duration,
                ids: &[i64],
            ) -> $crate::Result<Option<$crate::Migration>> {
                migrations::claim_among(self, worker, lease, ids).await
            }
            async fn table_lease_release(&self, migration_id: i64) -> $crate::Result<()> {
                migrations::lease_release(self, migration_id).await
            }
            async fn migration_range_exhaust(
                &self,
                migration_id: i64,
                expected_next: &$crate::Lower,
            ) -> $crate::Result<bool> {
                migrations::range_exhaust(self, migration_id, expected_next).await
            }
            async fn migration_resize(
                &self,
                params: &$crate::store::MigrationResizeParams,
            ) -> $crate::Result<Option<$crate::Migration>> {
                migrations::resize(self, params).await
            }
            async fn migration_set(
                &self,
                params: &$crate::store::MigrationSetParams,
            ) -> $crate::Result<Option<$crate::Migration>> {
                migrations::set(self, params).await
            }
            async fn migration_adopt_target(
                &self,
                migration_id: i64,
                target: &$crate::TargetIdentity,
                reason: &str,
                actor: &str,
            ) -> $crate::Result<Option<$crate::Migration>> {
                migrations::adopt_target(self, migration_id, target, reason, actor).await
            }
            async fn migration_hold_extend(
                &self,
                migration_id: i64,
                hold: std::time::Duration,
            ) -> $crate::Result<Option<$crate::Migration>> {
                migrations::hold_extend(self, migration_id, hold).await
            }
            async fn migration_throttle(
                &self,
                params: &$crate::store::MigrationThrottleParams,
            ) -> $crate::Result<Option<$crate::Migration>> {
                migrations::throttle(self, params).await
            }
            async fn job_create(
                &self,
                params: &$crate::store::JobCreateParams,
            ) -> $crate::Result<$crate::store::JobCreated> {
                jobs::create(self, params).await
            }
            async fn job_get(&self, id: i64) -> $crate::Result<Option<$crate::Job>> {
                $crate::store::reads::job_get(self, id).await
            }
            async fn job_list(
                &self,
                migration_id: i64,
                status: Option<$crate::JobStatus>,
            ) -> $crate::Result<Vec<$crate::Job>> {
                $crate::store::reads::job_list(self, migration_id, status).await
            }
            async fn job_find_retriable(
                &self,
                migration_id: i64,
                max_attempts: i32,
            ) -> $crate::Result<Option<$crate::Job>> {
                jobs::find_retriable(self, migration_id, max_attempts).await
            }
            async fn job_transition(
                &self,
                params: &$crate::store::JobTransitionParams,
            ) -> $crate::Result<$crate::Job> {
                jobs::transition(self, params).await
            }
            async fn job_split(
                &self,
                params: &$crate::store::JobSplitParams,
            ) -> $crate::Result<($crate::Job, $crate::Job)> {
                jobs::split(self, params).await
            }
            async fn job_checkpoint(
                &self,
                job_id: i64,
                attempts: i32,
                cursor: &$crate::Key,
                rows: i64,
                lease: std::time::Duration,
            ) -> $crate::Result<bool> {
                jobs::checkpoint(self, job_id, attempts, cursor, rows, lease).await
            }
            async fn job_heartbeat(
                &self,
                job_id: i64,
                attempts: i32,
                lease: std::time::Duration,
            ) -> $crate::Result<bool> {
                jobs::heartbeat(self, job_id, attempts, lease).await
            }
            async fn job_counts(
                &self,
                migration_id: i64,
                max_attempts: i32,
            ) -> $crate::Result<$crate::JobCounts> {
                jobs::counts(self, migration_id, max_attempts).await
            }
            async fn job_recent_succeeded(
                &self,
                migration_id: i64,
                limit: i64,
            ) -> $crate::Result<Vec<$crate::Job>> {
                $crate::store::reads::job_recent_succeeded(self, migration_id, limit).await
            }
            async fn job_transition_list(
                &self,
                job_id: i64,
            ) -> $crate::Result<Vec<$crate::JobTransition>> {
                $crate::store::reads::job_transition_list(self, job_id).await
            }
            async fn job_transition_list_by_migration(
                &self,
                migration_id: i64,
            ) -> $crate::Result<Vec<$crate::JobTransition>> {
                $crate::store::reads::job_transition_list_by_migration(self, migration_id).await
            }
            async fn migration_transition_list(
                &self,
                migration_id: i64,
            ) -> $crate::Result<Vec<$crate::MigrationTransition>> {
                $crate::store::reads::migration_transition_list(self, migration_id).await
            }
            async fn log_partitions_maintain(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                retention_months: u32,
            ) -> $crate::Result<$crate::store::PartitionReport> {
                logs::partitions_maintain(self, now, retention_months).await
            }
            async fn log_partitions_list(&self) -> $crate::Result<Vec<String>> {
                logs::partitions_list(self).await
            }
            async fn lane_list(
                &self,
                migration_id: i64,
            ) -> $crate::Result<Vec<$crate::model::Lane>> {
                lanes::list(self, migration_id).await
            }
            async fn lane_exhaust(
                &self,
                migration_id: i64,
                lane: Option<(i32, &$crate::Lower)>,
            ) -> $crate::Result<bool> {
                lanes::exhaust(self, migration_id, lane).await
            }
            async fn lane_hold(
                &self,
                params: &$crate::store::LaneHoldParams,
            ) -> $crate::Result<usize> {
                lanes::hold(self, params).await
            }
            async fn lane_move(
                &self,
                migration_id: i64,
                lane: i32,
                node: &str,
                reason: &str,
                actor: &str,
            ) -> $crate::Result<bool> {
                lanes::relocate(self, migration_id, lane, node, reason, actor).await
            }
        }
    };
}

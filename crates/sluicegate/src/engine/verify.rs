//! The check after a migration's last job (`--verify`): its condition over the whole range,
//! logged as a `verify` row (rows checked, violations, sample keys) in its log; a violation
//! means the migration fails with class `VerificationFailed` instead of finishing.

use super::WorkerLoop;
use crate::error::Result;
use crate::failure::{Failure, FailureClass};
use crate::model::Migration;
use crate::status::MigrationEvent;
use crate::store::MigrationTransitionParams;

impl WorkerLoop {
    /// Verifies `m` when it has a `--verify` condition: writes the `verify` row and returns
    /// the failure it ends with when a row violates the condition. `None`: nothing to verify,
    /// or every row meets it.
    pub(super) async fn verify_before_finish(&self, m: &Migration) -> Result<Option<Failure>> {
        if m.verify.is_none() {
            return Ok(None);
        }
        let found = self.sluicegate().verify_now(m).await?;
        let reason = found.describe();
        let params = MigrationTransitionParams::new(m, MigrationEvent::Verify, &self.name)?
            .with_reason(Some(reason.clone()));
        self.sluicegate()
            .store
            .migration_transition(&params)
            .await?;
        Ok((found.violations > 0).then(|| Failure::new(FailureClass::VerificationFailed, reason)))
    }
}

//! Verification (`--verify COND`, `sluicegate verify`): a migration's condition checked over
//! its whole key range (and scope), batch after batch as the walk finds them, read only. A
//! worker checks it after the last job and logs the result as a `verify` row; the migration
//! ends `finished` only with no violation, else `failed` with class `VerificationFailed`.

use serde::Serialize;

use crate::client::Sluicegate;
use crate::error::{Error, Result};
use crate::ident::TableName;
use crate::key::{Key, Lower};
use crate::model::Migration;

/// How many violating keys a verification keeps as samples.
pub const VERIFY_SAMPLES: i64 = 10;

/// What checking a migration's `--verify` condition found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verification {
    /// The condition.
    pub condition: String,
    /// Rows of the range (and scope) checked.
    pub checked: i64,
    /// Rows for which it is not true (NULL included).
    pub violations: i64,
    /// The first [`VERIFY_SAMPLES`] of their keys, in key order.
    pub samples: Vec<Key>,
}

impl Verification {
    /// The `verify` row's reason: `verify (domain IS NOT NULL): 5000 rows checked, 2
    /// violations; keys 17, 42`.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "verify ({}): {} rows checked, {} violation{}",
            self.condition,
            self.checked,
            self.violations,
            if self.violations == 1 { "" } else { "s" }
        );
        if !self.samples.is_empty() {
            let keys: Vec<String> = self.samples.iter().map(Key::to_string).collect();
            text.push_str(&format!(
                "; {}keys {}",
                if self.violations > self.samples.len() as i64 {
                    "first "
                } else {
                    ""
                },
                keys.join(", ")
            ));
        }
        text
    }
}

impl Sluicegate {
    /// Checks `m`'s `--verify` condition now over its key range, in batches of its batch size
    /// (each read under its statement timeout). An error when it has none.
    pub async fn verify_now(&self, m: &Migration) -> Result<Verification> {
        let Some(condition) = m.verify.clone() else {
            return Err(Error::InvalidSettings(format!(
                "migration {} ({}) has no --verify condition",
                m.id, m.name
            )));
        };
        let table = TableName::parse(&m.table_name)?;
        let scope = m.scope.as_deref();
        let mut found = Verification {
            condition: condition.clone(),
            checked: 0,
            violations: 0,
            samples: Vec::new(),
        };
        let mut lower = Lower::From(m.min_value.clone());
        let size = m.batch_size.max(1);
        while let Some((first, last)) = self
            .target
            .range_next(
                &table,
                &m.key,
                scope,
                &lower,
                &m.max_value,
                size,
                m.statement_timeout_ms,
            )
            .await?
        {
            let wanted = VERIFY_SAMPLES - found.samples.len() as i64;
            let count = self
                .target
                .verify_range(
                    &table,
                    &m.key,
                    scope,
                    &condition,
                    &first,
                    &last,
                    wanted,
                    m.statement_timeout_ms,
                )
                .await?;
            found.checked += count.checked;
            found.violations += count.violations;
            found.samples.extend(count.samples);
            if last == m.max_value {
                break;
            }
            lower = Lower::After(last);
        }
        Ok(found)
    }
}

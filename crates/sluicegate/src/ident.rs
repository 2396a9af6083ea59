//! Identifier quoting: the one place where a table, column or schema name becomes SQL text.

use crate::error::{Error, Result};

/// The longest identifier accepted (PostgreSQL truncates at 63 bytes; we refuse instead).
const MAX_IDENT_BYTES: usize = 63;

/// Checks that `ident` can name a database object: not empty, no NUL byte, at most 63 bytes.
/// Any other character is allowed, since [`quote`] makes it safe.
pub fn validate(ident: &str) -> Result<()> {
    let reason = if ident.is_empty() {
        "it is empty"
    } else if ident.contains('\0') {
        "it contains a NUL byte"
    } else if ident.len() > MAX_IDENT_BYTES {
        "it is longer than 63 bytes"
    } else {
        return Ok(());
    };
    Err(Error::InvalidIdentifier {
        ident: ident.to_owned(),
        reason: reason.to_owned(),
    })
}

/// Quotes one identifier for SQL (`a"b` becomes `"a""b"`), for both PostgreSQL and SQLite.
pub fn quote(ident: &str) -> String {
    let mut quoted = String::with_capacity(ident.len() + 2);
    quoted.push('"');
    for c in ident.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// A table name as given by the user: `table` or `schema.table`.
///
/// A dot splits schema from table only when there is exactly one; names with other dots must
/// be given as they are stored. The parts are kept raw and only ever reach SQL through [`quote`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// The schema, when given.
    pub schema: Option<String>,
    /// The table itself.
    pub table: String,
}

impl TableName {
    /// Parses and validates a user-supplied table name.
    pub fn parse(name: &str) -> Result<Self> {
        let (schema, table) = match name.split_once('.') {
            Some((schema, table)) if !table.contains('.') && !schema.is_empty() => {
                (Some(schema.to_owned()), table.to_owned())
            }
            _ => (None, name.to_owned()),
        };
        if let Some(schema) = &schema {
            validate(schema)?;
        }
        validate(&table)?;
        Ok(Self { schema, table })
    }

    /// The quoted, possibly schema-qualified name, ready for SQL.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote(schema), quote(&self.table)),
            None => quote(&self.table),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_embedded_quotes() {
        assert_eq!(quote("users"), "\"users\"");
        assert_eq!(
            quote("x\"; DROP TABLE t; --"),
            "\"x\"\"; DROP TABLE t; --\""
        );
    }

    #[test]
    fn rejects_empty_nul_and_long() {
        assert!(validate("").is_err());
        assert!(validate("a\0b").is_err());
        assert!(validate(&"a".repeat(64)).is_err());
        assert!(validate(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn splits_schema_once() {
        let t = TableName::parse("public.users").unwrap();
        assert_eq!(t.quoted(), "\"public\".\"users\"");
        let t = TableName::parse("a.b.c").unwrap();
        assert_eq!(t.schema, None);
        assert_eq!(t.quoted(), "\"a.b.c\"");
    }
}

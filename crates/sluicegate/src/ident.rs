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

    /// Reads a table name as the operator typed it, as PostgreSQL reads one: a part in double
    /// quotes is taken exactly (`"Billing"."InvoiceLines"`, `""` inside for a quote); an
    /// unquoted simple name (letters, digits, `_`, `$`) is folded to lower case (`Users` is
    /// `users`); anything else is taken as typed, as [`Self::parse`] does.
    pub fn parse_input(name: &str) -> Result<Self> {
        let parts = if name.contains('"') {
            match split_quoted(name) {
                Some(parts) => parts,
                None => return Self::parse(name),
            }
        } else {
            // No quotes: split as stored names are (one dot at most), then fold.
            let plain = Self::parse(name)?;
            let mut parts: Vec<(String, bool)> =
                plain.schema.into_iter().map(|s| (s, false)).collect();
            parts.push((plain.table, false));
            parts
        };
        let fold = |(part, quoted): (String, bool)| {
            let simple = !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
                && !part.starts_with(|c: char| c.is_ascii_digit() || c == '$');
            if quoted || !simple {
                part
            } else {
                part.to_ascii_lowercase()
            }
        };
        let mut parts: Vec<String> = parts.into_iter().map(fold).collect();
        let table = parts.pop().unwrap_or_default();
        let schema = parts.pop();
        if !parts.is_empty() {
            return Err(Error::InvalidIdentifier {
                ident: name.to_owned(),
                reason: "a table name has at most two parts: schema.table".into(),
            });
        }
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

/// `name` split at dots outside double quotes, each part with whether it was quoted; `None`
/// when a quote is unbalanced or stands inside an unquoted part (then the name is taken as
/// typed: `x"; DROP TABLE t; --` is a name, not SQL).
fn split_quoted(name: &str) -> Option<Vec<(String, bool)>> {
    let mut parts = Vec::new();
    let mut chars = name.chars().peekable();
    loop {
        let mut part = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' {
                    return None;
                }
                part.push(c);
                chars.next();
            }
        }
        parts.push((part, quoted));
        match chars.next() {
            None => return Some(parts),
            Some('.') => continue,
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_names_read_as_postgresql_reads_them() {
        let t = TableName::parse_input(r#""Billing"."InvoiceLines""#).unwrap();
        assert_eq!(
            (t.schema.as_deref(), t.table.as_str()),
            (Some("Billing"), "InvoiceLines")
        );
        let t = TableName::parse_input("Users").unwrap();
        assert_eq!((t.schema, t.table.as_str()), (None, "users"));
        let t = TableName::parse_input(r#"public."Odd""Name""#).unwrap();
        assert_eq!(
            (t.schema.as_deref(), t.table.as_str()),
            (Some("public"), "Odd\"Name")
        );
        // Not simple, not quoted: as typed.
        let t = TableName::parse_input("Tenant Rows").unwrap();
        assert_eq!(t.table, "Tenant Rows");
        let hostile = "x\"; DROP TABLE t; --";
        assert_eq!(TableName::parse_input(hostile).unwrap().table, hostile);
        assert_eq!(TableName::parse_input("a.b.c").unwrap().table, "a.b.c");
        assert!(TableName::parse_input(r#""a"."b"."c""#).is_err());
    }

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

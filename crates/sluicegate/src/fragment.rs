//! The operator's SQL, read by a SQL parser before anything runs.
//!
//! A migration's reach is the engine's, never the operator's text: `--set`, `--where`,
//! `--scope` and `--join` must each be exactly what their place in a statement expects (one
//! assignment list, one condition) with no comment and no placeholder, so that nothing written
//! in them can end, widen or comment out the sub-batch's range around them. A `--sql` script is
//! split into statements and each one parsed: it must change rows (`UPDATE`, `DELETE`,
//! `INSERT`), name the range in its code (`{range}`, or `$1` and `$2` for a one-column key
//! without a scope), and when it changes the migration's own table, restrict itself to the range
//! by a condition `AND`ed at the top of its `WHERE`. `{range}` is placed where the parse found
//! it (never by replacing text, so one written in a string or a comment is refused, not
//! replaced), qualified by the statement's alias for its table when the statement joins others.
//!
//! The parser is `sqlparser` (PostgreSQL's and SQLite's dialects): pure Rust, one crate for both
//! engines, with the token positions the placement needs. PostgreSQL's own parser (`pg_query`)
//! would read PostgreSQL exactly but not SQLite, and builds a C library; what `sqlparser`
//! accepts, the database then parses again at queue (the trial sub-batch), and what it misreads
//! is caught at run time by the engine's row count ([`crate::kind::JobKind::rows_are_keys`]).

use sqlparser::ast::{
    BinaryOperator, Expr, FromTable, ObjectName, ObjectNamePart, SetExpr, Statement, TableFactor,
    TableObject, TableWithJoins, UpdateTableFromKind,
};
use sqlparser::dialect::{Dialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer, Whitespace};

use crate::dialect::Backend;
use crate::ident::{self, TableName};
use crate::key::KeySpec;

/// What stands for the sub-batch's range in a `sql` statement.
pub const RANGE_PLACEHOLDER: &str = "{range}";

/// The identifier `{range}` becomes for the parser, so that the statement parses as SQL.
const RANGE_MARKER: &str = "sluicegate_range_marker";

fn dialect(backend: Backend) -> Box<dyn Dialect> {
    match backend {
        Backend::Postgres => Box::new(PostgreSqlDialect {}),
        Backend::Sqlite => Box::new(SQLiteDialect {}),
    }
}

fn tokens(backend: Backend, what: &str, text: &str) -> Result<Vec<TokenWithSpan>, String> {
    let dialect = dialect(backend);
    Tokenizer::new(dialect.as_ref(), text)
        .tokenize_with_location()
        .map_err(|e| format!("{what} is not valid SQL: {e}"))
}

/// The byte offsets of the tokens' locations (1-based lines and columns, in characters).
struct Offsets<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Offsets<'a> {
    fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, line_starts }
    }

    fn at(&self, location: Location) -> usize {
        let Some(&start) = self
            .line_starts
            .get(location.line.saturating_sub(1) as usize)
        else {
            return self.text.len();
        };
        let column = location.column.saturating_sub(1) as usize;
        self.text[start..]
            .char_indices()
            .nth(column)
            .map_or(self.text.len(), |(i, _)| start + i)
    }
}

fn is_comment(token: &Token) -> bool {
    matches!(
        token,
        Token::Whitespace(Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_))
    )
}

fn shown(token: &Token) -> String {
    let text = token.to_string();
    let text = text.trim();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text.to_owned()
    }
}

/// Refuses comments and placeholders in a fragment: a comment could end the statement's range
/// after it, and a placeholder would be bound to a key of the engine's choosing.
fn refuse_comments_and_placeholders(what: &str, tokens: &[TokenWithSpan]) -> Result<(), String> {
    for t in tokens {
        if is_comment(&t.token) {
            return Err(format!(
                "{what} holds a comment ({}): a fragment is one piece of SQL with no comment, since a comment would swallow what the engine writes after it; remove it",
                shown(&t.token)
            ));
        }
        if let Token::Placeholder(p) = &t.token {
            return Err(format!(
                "{what} holds the placeholder {p}: the engine binds the sub-batch's range itself; write the condition without it"
            ));
        }
    }
    Ok(())
}

fn parser_for<'a>(dialect: &'a dyn Dialect, what: &str, text: &str) -> Result<Parser<'a>, String> {
    Parser::new(dialect)
        .try_with_sql(text)
        .map_err(|e| format!("{what} is not valid SQL: {e}"))
}

/// Requires the parser to be at the end of the text: what follows is not part of the fragment.
fn at_end(what: &str, expected: &str, parser: &mut Parser<'_>) -> Result<(), String> {
    let next = parser.peek_token();
    if next.token == Token::EOF {
        return Ok(());
    }
    Err(format!(
        "{what} is not {expected}: it goes on with {:?} at line {}, column {} (an unbalanced parenthesis, a `;` or a second clause?)",
        shown(&next.token),
        next.span.start.line,
        next.span.start.column
    ))
}

/// Checks that `text` is exactly one SQL condition (`--where`, `--scope`, `--join`): one
/// expression, parentheses balanced, nothing after it, no comment, no placeholder.
pub fn check_condition(backend: Backend, what: &str, text: &str) -> Result<(), String> {
    let toks = tokens(backend, what, text)?;
    refuse_comments_and_placeholders(what, &toks)?;
    let dialect = dialect(backend);
    let mut parser = parser_for(dialect.as_ref(), what, text)?;
    parser
        .parse_expr()
        .map_err(|e| format!("{what} is not one SQL condition: {e}"))?;
    at_end(what, "one SQL condition", &mut parser)
}

/// Checks that `text` is exactly an `UPDATE`'s assignment list (`--set`: `a = expr, b = expr`),
/// with nothing after it, no comment and no placeholder.
pub fn check_assignments(backend: Backend, what: &str, text: &str) -> Result<(), String> {
    let toks = tokens(backend, what, text)?;
    refuse_comments_and_placeholders(what, &toks)?;
    let dialect = dialect(backend);
    let mut parser = parser_for(dialect.as_ref(), what, text)?;
    parser
        .parse_comma_separated(Parser::parse_assignment)
        .map_err(|e| format!("{what} is not a list of assignments (col = expr, ...): {e}"))?;
    at_end(what, "a list of assignments (col = expr, ...)", &mut parser)
}

/// Checks that a health probe is exactly one query (`SELECT ...`), no second statement.
pub fn check_probe(backend: Backend, what: &str, text: &str) -> Result<(), String> {
    let dialect = dialect(backend);
    let statements = Parser::parse_sql(dialect.as_ref(), text)
        .map_err(|e| format!("{what} must be one query returning a boolean (SELECT ...): {e}"))?;
    match statements.as_slice() {
        [Statement::Query(query)] if matches!(*query.body, SetExpr::Select(_) | SetExpr::Values(_)) => {
            Ok(())
        }
        [_] => Err(format!(
            "{what} must be one query returning a boolean (SELECT ...), not another kind of statement"
        )),
        [] => Err(format!("{what} holds no statement")),
        many => Err(format!(
            "{what} must be one query; it holds {} statements",
            many.len()
        )),
    }
}

/// A `sql` script read by the parser: its statements with `{range}` located.
#[derive(Debug, Clone)]
pub struct Script {
    /// Its statements, in order.
    pub statements: Vec<ScriptStatement>,
}

/// One statement of a `sql` script.
#[derive(Debug, Clone)]
pub struct ScriptStatement {
    /// Its text, cut where `{range}` stood: the range goes between consecutive pieces.
    pieces: Vec<String>,
    /// What qualifies the range's columns in it (the alias or the quoted name of the
    /// migration's table), when it joins other tables.
    pub qualifier: Option<String>,
    /// Whether it updates or deletes rows of the migration's own table: then each row it
    /// reports is a row of the sub-batch.
    pub changes_own_rows: bool,
}

impl ScriptStatement {
    /// The statement with `range` (a parenthesised predicate) where `{range}` stood.
    pub fn render(&self, range: &str) -> String {
        self.pieces.join(range)
    }

    /// Whether `{range}` appears in it (otherwise it uses `$1`/`$2`).
    pub fn names_range(&self) -> bool {
        self.pieces.len() > 1
    }
}

fn names_table(name: &ObjectName, table: &TableName, backend: Backend) -> bool {
    let parts: Vec<&sqlparser::ast::Ident> = name
        .0
        .iter()
        .filter_map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(i),
            _ => None,
        })
        .collect();
    let same = |ident: &sqlparser::ast::Ident, stored: &str| match (backend, ident.quote_style) {
        (Backend::Postgres, None) => ident.value.to_lowercase() == stored,
        (Backend::Postgres, Some(_)) => ident.value == stored,
        (Backend::Sqlite, _) => ident.value.eq_ignore_ascii_case(stored),
    };
    match parts.as_slice() {
        [t] => same(t, &table.table),
        [s, t] => same(t, &table.table) && table.schema.as_deref().is_none_or(|ts| same(s, ts)),
        _ => false,
    }
}

/// The top-level `AND`ed conditions of a `WHERE`.
fn conjuncts(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut all = conjuncts(left);
            all.extend(conjuncts(right));
            all
        }
        Expr::Nested(inner) => conjuncts(inner),
        other => vec![other],
    }
}

fn is_marker(expr: &Expr) -> bool {
    match expr {
        Expr::Identifier(i) => i.value.eq_ignore_ascii_case(RANGE_MARKER),
        Expr::Nested(inner) => is_marker(inner),
        _ => false,
    }
}

fn is_placeholder(expr: &Expr, which: &str) -> bool {
    match expr {
        Expr::Value(v) => matches!(&v.value, sqlparser::ast::Value::Placeholder(p) if p == which),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => is_placeholder(expr, which),
        _ => false,
    }
}

/// Whether `{range}` is `AND`ed at the top of `selection`.
fn restricted_by_marker(selection: Option<&Expr>) -> bool {
    selection.is_some_and(|s| conjuncts(s).iter().any(|c| is_marker(c)))
}

/// Whether the key column (unqualified) is bounded by `$1` and `$2` at the top of `selection`:
/// `key BETWEEN $1 AND $2`, or `key >= $1` and `key <= $2`, `AND`ed with the rest. With no
/// key given (only the shape is wanted), any column.
fn restricted_by_bounds(selection: Option<&Expr>, key: Option<&str>, backend: Backend) -> bool {
    let Some(selection) = selection else {
        return false;
    };
    let all = conjuncts(selection);
    let is_key = |expr: &Expr| match (expr, key) {
        (Expr::Identifier(_), None) => true,
        (Expr::Identifier(i), Some(key)) => match (backend, i.quote_style) {
            (Backend::Postgres, None) => i.value.to_lowercase() == key,
            (Backend::Postgres, Some(_)) => i.value == key,
            (Backend::Sqlite, _) => i.value.eq_ignore_ascii_case(key),
        },
        _ => false,
    };
    let between = all.iter().any(|c| {
        matches!(c, Expr::Between { expr, negated: false, low, high }
            if is_key(expr) && is_placeholder(low, "$1") && is_placeholder(high, "$2"))
    });
    let bound = |op: BinaryOperator, which: &str| {
        all.iter().any(|c| {
            matches!(c, Expr::BinaryOp { left, op: o, right }
                if *o == op && is_key(left) && is_placeholder(right, which))
        })
    };
    between || (bound(BinaryOperator::GtEq, "$1") && bound(BinaryOperator::LtEq, "$2"))
}

/// The first CTE of a top-level `WITH` that changes rows (`WITH g AS (DELETE ...)`), if any.
fn data_modifying_cte(statement: &Statement) -> Option<String> {
    let Statement::Query(query) = statement else {
        return None;
    };
    let with = query.with.as_ref()?;
    with.cte_tables
        .iter()
        .find(|cte| {
            !matches!(
                *cte.query.body,
                SetExpr::Select(_)
                    | SetExpr::Values(_)
                    | SetExpr::SetOperation { .. }
                    | SetExpr::Query(_)
            )
        })
        .map(|cte| cte.alias.name.value.clone())
}

/// Whether the statement inserts into the migration's own table.
fn inserts_into(statement: &Statement, table: &TableName, backend: Backend) -> bool {
    match statement {
        Statement::Insert(insert) => {
            matches!(&insert.table, TableObject::TableName(name) if names_table(name, table, backend))
        }
        Statement::Query(query) => match &*query.body {
            SetExpr::Insert(inner) => inserts_into(inner, table, backend),
            _ => false,
        },
        _ => false,
    }
}

/// The alias of the table in `twj`, or its quoted name, when it is `table`.
fn qualifier_of(twj: &TableWithJoins, table: &TableName, backend: Backend) -> Option<String> {
    match &twj.relation {
        TableFactor::Table { name, alias, .. } if names_table(name, table, backend) => Some(
            alias
                .as_ref()
                .map(|a| match (backend, a.name.quote_style) {
                    // PostgreSQL folds an unquoted alias to lower case.
                    (Backend::Postgres, None) => ident::quote(&a.name.value.to_lowercase()),
                    _ => ident::quote(&a.name.value),
                })
                .unwrap_or_else(|| table.quoted()),
        ),
        _ => None,
    }
}

/// What a statement changes, as far as the range is concerned.
struct Shape {
    /// It updates or deletes rows of the migration's own table.
    own: bool,
    /// Its condition, for an own-table `UPDATE`/`DELETE`.
    selection: Option<Expr>,
    /// The qualifier for `{range}` when the statement joins other tables.
    qualifier: Option<String>,
}

fn shape_of(statement: &Statement, table: &TableName, backend: Backend) -> Option<Shape> {
    match statement {
        Statement::Update(update) => {
            let own = matches!(&update.table.relation, TableFactor::Table { name, .. } if names_table(name, table, backend));
            let joins = !update.table.joins.is_empty()
                || matches!(&update.from, Some(UpdateTableFromKind::AfterSet(f) | UpdateTableFromKind::BeforeSet(f)) if !f.is_empty());
            Some(Shape {
                own,
                selection: update.selection.clone(),
                qualifier: (own && joins)
                    .then(|| qualifier_of(&update.table, table, backend))
                    .flatten(),
            })
        }
        Statement::Delete(delete) => {
            let from = match &delete.from {
                FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
            };
            let own = from.len() == 1
                && delete.tables.is_empty()
                && matches!(&from[0].relation, TableFactor::Table { name, .. } if names_table(name, table, backend));
            let joins = delete.using.as_ref().is_some_and(|u| !u.is_empty())
                || from.iter().any(|f| !f.joins.is_empty());
            Some(Shape {
                own,
                selection: delete.selection.clone(),
                qualifier: (own && joins)
                    .then(|| qualifier_of(&from[0], table, backend))
                    .flatten(),
            })
        }
        // An insert into another table (an archive) copies the range; one into the table
        // itself is refused before this ([`inserts_into`]).
        Statement::Insert(_) => Some(Shape {
            own: false,
            selection: None,
            qualifier: None,
        }),
        Statement::Query(query) => match &*query.body {
            SetExpr::Update(inner) | SetExpr::Delete(inner) | SetExpr::Insert(inner) => {
                shape_of(inner, table, backend)
            }
            _ => None,
        },
        _ => None,
    }
}

/// Reads a `sql` script: splits it into statements (at `;` outside strings, quoted names,
/// dollar quotes and comments), locates `{range}` in each by its tokens and checks each one's
/// shape. `key` is the migration's key (`None`: only the statements' shapes are wanted, as
/// [`crate::kind::JobKind::rows_are_keys`] asks, and `$1`/`$2` are not checked against it);
/// `scoped` whether it has a `--scope` (which only `{range}` carries).
pub fn parse_script(
    backend: Backend,
    text: &str,
    table: &TableName,
    key: Option<&KeySpec>,
    scoped: bool,
) -> Result<Script, String> {
    let toks = tokens(backend, "the sql script", text)?;
    let offsets = Offsets::new(text);
    let mut groups: Vec<Vec<&TokenWithSpan>> = vec![Vec::new()];
    for t in &toks {
        match t.token {
            Token::SemiColon => groups.push(Vec::new()),
            Token::EOF => {}
            _ => groups.last_mut().expect("one group").push(t),
        }
    }
    groups.retain(|g| g.iter().any(|t| !matches!(t.token, Token::Whitespace(_))));
    if groups.is_empty() {
        return Err("argument \"sql\" holds no statement".into());
    }
    let count = groups.len();
    let mut statements = Vec::new();
    for (n, group) in groups.iter().enumerate() {
        let which = if count == 1 {
            "the sql statement".to_owned()
        } else {
            format!("statement {} of {count}", n + 1)
        };
        statements.push(read_statement(
            backend, &which, text, &offsets, group, table, key, scoped,
        )?);
    }
    Ok(Script { statements })
}

#[allow(clippy::too_many_arguments)]
fn read_statement(
    backend: Backend,
    which: &str,
    text: &str,
    offsets: &Offsets<'_>,
    group: &[&TokenWithSpan],
    table: &TableName,
    key: Option<&KeySpec>,
    scoped: bool,
) -> Result<ScriptStatement, String> {
    let key_columns = key.map_or(1, KeySpec::len);
    let blank = |t: &&&TokenWithSpan| {
        matches!(
            t.token,
            Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab)
        )
    };
    let first = group.iter().position(|t| !blank(&t)).unwrap_or(0);
    let last = group
        .iter()
        .rposition(|t| !blank(&t))
        .unwrap_or(group.len() - 1);
    let group = &group[first..=last];
    let start = offsets.at(group[0].span.start);
    let end = offsets.at(group[group.len() - 1].span.end);
    // The `{range}` placeholders: the tokens `{`, `range`, `}` in a row, in code.
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < group.len() {
        let is_range = matches!(group[i].token, Token::LBrace)
            && matches!(group.get(i + 1).map(|t| &t.token), Some(Token::Word(w)) if w.value == "range" && w.quote_style.is_none())
            && matches!(group.get(i + 2).map(|t| &t.token), Some(Token::RBrace));
        if is_range {
            ranges.push((
                offsets.at(group[i].span.start),
                offsets.at(group[i + 2].span.end),
            ));
            i += 3;
            continue;
        }
        let token = &group[i].token;
        let written = token.to_string();
        if written.contains(RANGE_PLACEHOLDER) {
            let place = if is_comment(token) {
                "a comment"
            } else {
                "a string or a quoted name"
            };
            return Err(format!(
                "{which} writes {RANGE_PLACEHOLDER} inside {place} ({}): it would not be the sub-batch's range there; write {RANGE_PLACEHOLDER} as code, and no {RANGE_PLACEHOLDER} in text",
                shown(token)
            ));
        }
        if let Token::Word(w) = token {
            if w.value.eq_ignore_ascii_case(RANGE_MARKER) {
                return Err(format!(
                    "{which} uses the name {RANGE_MARKER}, which sluicegate keeps for itself"
                ));
            }
        }
        i += 1;
    }
    let placeholders: Vec<&str> = group
        .iter()
        .filter_map(|t| match &t.token {
            Token::Placeholder(p) => Some(p.as_str()),
            _ => None,
        })
        .collect();
    let has_bounds = placeholders.contains(&"$1") && placeholders.contains(&"$2");
    if let Some(other) = placeholders.iter().find(|p| !matches!(**p, "$1" | "$2")) {
        return Err(format!(
            "{which} uses the placeholder {other}: only $1 and $2 (the sub-batch's first and last key) are bound; use {RANGE_PLACEHOLDER} for any key"
        ));
    }
    if ranges.is_empty() && !has_bounds {
        return Err(format!(
            "{which} must restrict itself to the sub-batch: use {RANGE_PLACEHOLDER} (its key range, any key) or $1 and $2 (its first and last key, one-column keys) in its code: {}",
            text[start..end].trim()
        ));
    }
    if ranges.is_empty() && key_columns > 1 {
        return Err(format!(
            "{which} uses $1 and $2, which hold one column of the key; the key has {key_columns} columns: use {RANGE_PLACEHOLDER}"
        ));
    }
    if ranges.is_empty() && scoped {
        return Err(format!(
            "{which} uses $1 and $2, which carry no scope: with --scope, write {RANGE_PLACEHOLDER} (the range and the scope) so that only rows in scope are touched"
        ));
    }
    // The pieces between the placeholders, and the text the parser reads.
    let mut pieces = Vec::new();
    let mut parsed = String::new();
    let mut at = start;
    for (from, to) in &ranges {
        pieces.push(text[at..*from].to_owned());
        parsed.push_str(&text[at..*from]);
        parsed.push_str(&format!(" {RANGE_MARKER} "));
        at = *to;
    }
    pieces.push(text[at..end].to_owned());
    parsed.push_str(&text[at..end]);
    let dialect = dialect(backend);
    let parsed_statements = Parser::parse_sql(dialect.as_ref(), &parsed)
        .map_err(|e| format!("{which} is not valid SQL: {e}"))?;
    let [statement] = parsed_statements.as_slice() else {
        return Err(format!("{which} is not one statement"));
    };
    if let Some(cte) = data_modifying_cte(statement) {
        return Err(format!(
            "{which} changes rows in its WITH clause ({cte}): a data-modifying CTE is not restricted by the range; write it as a statement of its own, with {RANGE_PLACEHOLDER}"
        ));
    }
    if inserts_into(statement, table, backend) {
        return Err(format!(
            "{which} inserts into {} itself: an INSERT adds (or, with ON CONFLICT ... DO UPDATE or OR REPLACE, changes) rows outside the sub-batch; insert into another table, or UPDATE the range",
            table.quoted()
        ));
    }
    let Some(shape) = shape_of(statement, table, backend) else {
        return Err(format!(
            "{which} must change rows (UPDATE, DELETE or INSERT ... SELECT); other statements (transaction control, DDL, SET, a lone SELECT) cannot run inside a sub-batch"
        ));
    };
    let key_column = key
        .filter(|k| k.len() == 1)
        .map(|k| k.columns()[0].name.as_str());
    let restricted = if ranges.is_empty() {
        // `$1`/`$2` restrict the statement only on the key's own column, unqualified: a
        // qualified name could be another table's, while an unqualified one is the table's own
        // (the table has the column; were a joined table to have it too, the name would be
        // ambiguous, an error at the queue's trial).
        restricted_by_bounds(shape.selection.as_ref(), key_column, backend)
    } else {
        restricted_by_marker(shape.selection.as_ref())
    };
    if shape.own && !restricted {
        return Err(format!(
            "{which} changes {} itself but its WHERE does not restrict it to the sub-batch: write WHERE {RANGE_PLACEHOLDER} AND ... (the range ANDed at the top of the condition, not under an OR or a NOT)",
            table.quoted()
        ));
    }
    Ok(ScriptStatement {
        pieces,
        qualifier: shape.qualifier,
        changes_own_rows: shape.own,
    })
}

/// The highest `$k` placeholder a statement names in its code (0: none).
pub fn highest_placeholder(backend: Backend, sql: &str) -> usize {
    let Ok(toks) = tokens(backend, "the statement", sql) else {
        // Text the tokenizer cannot read (a custom kind's own SQL): bind as many values as any
        // `$k` in it asks for; the database says what is wrong with the rest.
        return sql
            .split('$')
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<usize>().ok()
            })
            .max()
            .unwrap_or(0);
    };
    toks.iter()
        .filter_map(|t| match &t.token {
            Token::Placeholder(p) => p.strip_prefix('$')?.parse::<usize>().ok(),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> TableName {
        TableName::parse("t").unwrap()
    }

    pub(super) fn id() -> KeySpec {
        KeySpec::new(vec![crate::key::KeyColumn {
            name: "id".into(),
            key_type: crate::key::KeyType::Bigint,
        }])
    }

    #[test]
    fn conditions_must_be_one_expression_without_comments() {
        for backend in [Backend::Postgres, Backend::Sqlite] {
            assert!(check_condition(backend, "--scope", "flag AND n > 2").is_ok());
            let e = check_condition(backend, "--scope", "flag) OR (true").unwrap_err();
            assert!(e.contains("goes on"), "{e}");
            let e = check_condition(backend, "--where", "n > 1 -- note").unwrap_err();
            assert!(e.contains("comment"), "{e}");
            let e = check_condition(backend, "--where", "n > 1 /* x */").unwrap_err();
            assert!(e.contains("comment"), "{e}");
            assert!(check_condition(backend, "--where", "n > $1").is_err());
            assert!(check_condition(backend, "--where", "true; DROP TABLE t").is_err());
            assert!(check_condition(backend, "--where", "note = '-- not a comment'").is_ok());
        }
        assert!(check_condition(
            Backend::Postgres,
            "--scope",
            "created_at < now() - interval '1 year'"
        )
        .is_ok());
    }

    #[test]
    fn assignments_must_be_a_list_of_assignments() {
        let pg = Backend::Postgres;
        assert!(check_assignments(pg, "--set", "email_lower = lower(email), n = n + 1").is_ok());
        let e = check_assignments(pg, "--set", "n = n + 1 -- bump the counter").unwrap_err();
        assert!(e.contains("comment"), "{e}");
        assert!(check_assignments(pg, "--set", "n = 1 WHERE true").is_err());
        assert!(check_assignments(pg, "--set", "n = (1").is_err());
        assert!(check_assignments(pg, "--set", "body = body - 'tmp'").is_ok());
    }

    #[test]
    fn range_is_placed_by_tokens_not_text() {
        let pg = Backend::Postgres;
        let s = parse_script(
            pg,
            "UPDATE t SET n = n + 1 /* only rows in {range} */",
            &t(),
            Some(&id()),
            false,
        );
        assert!(s.unwrap_err().contains("comment"));
        let s = parse_script(
            pg,
            "UPDATE t SET note = 'see {range} docs' WHERE {range}",
            &t(),
            Some(&id()),
            false,
        );
        assert!(s.unwrap_err().contains("string"));
        let s = parse_script(pg, "UPDATE t SET n = '$1 $2'", &t(), Some(&id()), false);
        assert!(s.unwrap_err().contains("must restrict"));
        let s = parse_script(
            pg,
            "UPDATE t SET n = n + 1 WHERE {range} OR true",
            &t(),
            Some(&id()),
            false,
        );
        assert!(s.unwrap_err().contains("does not restrict"));
        let s = parse_script(
            pg,
            "UPDATE t SET n = n + 1 WHERE id BETWEEN $1 AND $2",
            &t(),
            Some(&id()),
            true,
        );
        assert!(s.unwrap_err().contains("scope"));
        let s = parse_script(
            pg,
            "COMMIT; UPDATE t SET n = 1 WHERE {range}",
            &t(),
            Some(&id()),
            false,
        );
        assert!(s.unwrap_err().contains("statement 1 of 2 must restrict"));
        let s = parse_script(
            pg,
            "SELECT count(*) FROM t WHERE {range}",
            &t(),
            Some(&id()),
            false,
        );
        assert!(s.unwrap_err().contains("must change rows"));
        let s = parse_script(pg, "DELETE FROM c WHERE p IN (SELECT id FROM t WHERE {range}); DELETE FROM t WHERE {range} AND note <> 'a;b'", &t(), Some(&id()), true).unwrap();
        assert_eq!(s.statements.len(), 2);
        assert!(!s.statements[0].changes_own_rows);
        assert!(s.statements[1].changes_own_rows);
        assert_eq!(
            s.statements[1].render("(X)"),
            "DELETE FROM t WHERE (X) AND note <> 'a;b'"
        );
        let s = parse_script(
            pg,
            "UPDATE t AS a SET n = o.n FROM o WHERE o.id = a.id AND {range}",
            &t(),
            Some(&id()),
            false,
        )
        .unwrap();
        assert_eq!(s.statements[0].qualifier.as_deref(), Some("\"a\""));
        let s = parse_script(
            pg,
            "UPDATE t SET n = n + 1 WHERE id BETWEEN $1 AND $2",
            &t(),
            Some(&id()),
            false,
        )
        .unwrap();
        assert!(!s.statements[0].names_range());
    }

    #[test]
    fn what_a_script_cannot_hide_from_the_range() {
        let pg = Backend::Postgres;
        let refused = |sql: &str, says: &str| {
            let e = parse_script(pg, sql, &t(), Some(&id()), false).unwrap_err();
            assert!(e.contains(says), "{sql}: {e}");
        };
        refused(
            "WITH g AS (DELETE FROM t RETURNING id) UPDATE t SET n = n WHERE {range}",
            "changes rows in its WITH clause (g)",
        );
        refused(
            "INSERT INTO t (id) SELECT id FROM t WHERE {range} OR true ON CONFLICT (id) DO UPDATE SET n = t.n + 1",
            "inserts into",
        );
        refused(
            "DELETE FROM t WHERE parent_id BETWEEN $1 AND $2",
            "does not restrict",
        );
        refused(
            "DELETE FROM t USING o WHERE o.id BETWEEN $1 AND $2",
            "does not restrict",
        );
        let joined =
            "UPDATE t SET n = n + 1 FROM (SELECT pg_sleep(0.02)) AS z WHERE id BETWEEN $1 AND $2";
        assert!(parse_script(pg, joined, &t(), Some(&id()), false).is_ok());
        refused(
            "UPDATE t SET n = 1 WHERE x.id >= $1 AND x.id <= $2",
            "does not restrict",
        );
        let s = parse_script(
            pg,
            "UPDATE t AS T1 SET n = o.n FROM o WHERE o.id = T1.id AND {range}",
            &t(),
            Some(&id()),
            false,
        )
        .unwrap();
        assert_eq!(s.statements[0].qualifier.as_deref(), Some("\"t1\""));
        let s = parse_script(
            pg,
            "WITH old AS (SELECT id FROM t WHERE {range}) DELETE FROM t WHERE {range} AND id IN (SELECT id FROM old)",
            &t(),
            Some(&id()),
            false,
        );
        assert!(s.is_ok(), "{s:?}");
    }

    #[test]
    fn placeholders_are_counted_in_code_only() {
        let pg = Backend::Postgres;
        assert_eq!(highest_placeholder(pg, "x BETWEEN $1 AND $2"), 2);
        assert_eq!(
            highest_placeholder(pg, "(x, y) >= ($1, $2) AND (x, y) <= ($3, $4)"),
            4
        );
        assert_eq!(
            highest_placeholder(pg, "note = '$9' AND a = $tag$ $7 $tag$"),
            0
        );
        assert_eq!(highest_placeholder(pg, "SELECT 1 -- $5"), 0);
        assert_eq!(
            highest_placeholder(Backend::Sqlite, "x BETWEEN $1 AND $2"),
            2
        );
    }
}

#[cfg(test)]
mod dialect_coverage {
    use super::tests::id;
    use super::*;

    /// Conditions operators write on PostgreSQL: each must read as one condition.
    const PG_CONDITIONS: &[&str] = &[
        "email_lower IS NULL",
        "created_at < now() - interval '1 year'",
        "created_at < now() - '1 year'::interval",
        "payload->>'kind' = 'orphan'",
        "data @> '{\"a\": 1}'",
        "data ? 'a'",
        "tags && ARRAY['x', 'y']",
        "email ~* '^admin'",
        "email !~ 'x'",
        "a IS DISTINCT FROM b",
        "status IN ('a', 'b') AND NOT deleted",
        "NOT EXISTS (SELECT 1 FROM pipelines p WHERE p.id = stages.pipeline_id)",
        "id % 2 = 0",
        "(data->'a')::int > 3",
        "coalesce(a, b) <> ''",
        "CASE WHEN a THEN b ELSE c END",
        "name COLLATE \"C\" > 'm'",
        "email ILIKE '%@example.com'",
        "x = ANY (ARRAY[1, 2, 3])",
        "date_trunc('day', ts) = '2024-01-01'",
        "extract(epoch FROM ts) > 0",
        "length(trim(both ' ' FROM name)) > 0",
        "arr[1] = 3",
        "jsonb_typeof(data) = 'object'",
        "tsv @@ to_tsquery('a')",
        "E'\\n' = sep",
        "note = $$it's$$",
        "uuid_col = '0b7e6c1e-1b8c-4c3f-9a5e-2d4b1f0a9c11'::uuid",
        "(a, b) = (1, 2)",
        "pipeline_id IS NOT NULL AND stage_idx >= 0",
    ];

    const PG_SETS: &[&str] = &[
        "email_lower = lower(email)",
        "body = body - 'tmp'",
        "body = body #- '{a,b}'",
        "data = jsonb_set(data, '{a}', '1')",
        "n = n + 1, note = NULL",
        "user_id_big = user_id",
        "slug = regexp_replace(lower(name), '[^a-z0-9]+', '-', 'g')",
        "amount = round(amount::numeric, 2)",
        "token = md5(random()::text)",
        "state = CASE WHEN done THEN 'x' ELSE 'y' END",
    ];

    const SQLITE_CONDITIONS: &[&str] = &[
        "json_extract(body, '$.a') = 1",
        "body ->> '$.a' = 1",
        "name GLOB 'a*'",
        "ifnull(a, b) <> ''",
        "strftime('%Y', ts) = '2024'",
        "ts < datetime('now', '-1 year')",
        "a IS NOT b",
        "iif(a, b, c)",
        "CAST(x AS INTEGER) > 2",
    ];

    #[test]
    fn what_operators_write_is_read() {
        for c in PG_CONDITIONS {
            check_condition(Backend::Postgres, "--where", c).unwrap_or_else(|e| panic!("{c}: {e}"));
        }
        for c in PG_SETS {
            check_assignments(Backend::Postgres, "--set", c).unwrap_or_else(|e| panic!("{c}: {e}"));
        }
        for c in SQLITE_CONDITIONS {
            check_condition(Backend::Sqlite, "--where", c).unwrap_or_else(|e| panic!("{c}: {e}"));
        }
    }

    #[test]
    fn scripts_operators_write_are_read() {
        let t = TableName::parse("docs").unwrap();
        for (sql, own) in [
            ("UPDATE docs SET body = body - 'tmp' WHERE {range}", true),
            ("DELETE FROM notes WHERE doc_id IN (SELECT id FROM docs WHERE {range}); DELETE FROM docs WHERE {range}", true),
            ("INSERT INTO docs_archive SELECT * FROM docs WHERE {range}", false),
            ("UPDATE docs d SET body = s.body FROM (SELECT id, body FROM src) s WHERE s.id = d.id AND {range}", true),
            ("WITH old AS (SELECT id FROM docs WHERE {range} AND archived) DELETE FROM docs WHERE {range} AND id IN (SELECT id FROM old)", true),
            ("UPDATE docs SET n = n + 1 WHERE id BETWEEN $1 AND $2", true),
            ("UPDATE docs SET n = n + 1 WHERE id >= $1 AND id <= $2 AND n < 5", true),
            ("DELETE FROM public.docs WHERE {range} AND NOT EXISTS (SELECT 1 FROM notes WHERE notes.doc_id = docs.id)", true),
        ] {
            let script = parse_script(Backend::Postgres, sql, &t, Some(&id()), false)
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(script.statements.last().unwrap().changes_own_rows, own, "{sql}");
        }
    }
}

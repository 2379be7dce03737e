//! The store's statements, and the two ways their values reach Postgres.
//!
//! On a direct connection (or through a session-mode pooler) a statement is
//! prepared once per connection and its values are bound parameters. A
//! transaction-mode pooler cannot keep a prepared statement from one
//! transaction to the next, and sqlx's unnamed statements take two round
//! trips (parse, then bind), with the server connection free to change in
//! between. There the statement is sent as one simple-protocol query with
//! its values written in as literals: still one round trip, and nothing
//! outlives it.
//!
//! Every statement names its objects with the schema (`"schema".object`),
//! so no operation depends on the session's `search_path`, which a
//! transaction-mode pooler would neither pass on nor keep.

use std::fmt::Write as _;
use std::sync::Arc;

use onceflight_core::{Error, Result};
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query;

/// One value of a statement.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    /// `text`.
    Text(&'a str),
    /// `text`, `NULL` when absent.
    OptText(Option<&'a str>),
    /// `bigint`.
    BigInt(i64),
    /// `bigint`, `NULL` when absent.
    OptBigInt(Option<i64>),
    /// `integer`.
    Int(i32),
    /// `boolean`.
    Bool(bool),
    /// `bytea`.
    Bytes(&'a [u8]),
}

/// A piece of a statement's text: SQL, or the value of parameter `$n`.
#[derive(Debug)]
enum Piece {
    Sql(String),
    Param(usize),
}

/// A statement of the store, its schema spliced in: the text sqlx prepares
/// (with `$n` parameters) and the same text cut at its parameters, to be
/// written out with literals.
#[derive(Debug)]
pub(crate) struct Statement {
    prepared: Arc<str>,
    pieces: Vec<Piece>,
}

impl Statement {
    /// `template` with every `{schema}` replaced by the quoted `schema`.
    /// `schema` must be a checked plain identifier (lowercase letters,
    /// digits, `_`); `$1`…`$9` mark parameters.
    pub(crate) fn new(template: &str, schema: &str) -> Self {
        let text = template.replace("{schema}", &format!("\"{schema}\""));
        let mut pieces = Vec::new();
        let mut sql = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek().and_then(|d| d.to_digit(10))) {
                ('$', Some(n)) => {
                    chars.next();
                    pieces.push(Piece::Sql(std::mem::take(&mut sql)));
                    pieces.push(Piece::Param(n as usize));
                }
                _ => sql.push(c),
            }
        }
        pieces.push(Piece::Sql(sql));
        Self {
            prepared: text.into(),
            pieces,
        }
    }

    /// The statement with `args` bound as parameters, for a connection that
    /// keeps prepared statements.
    pub(crate) fn bind<'q>(&self, args: &[Arg<'q>]) -> Query<'q, Postgres, PgArguments> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(Arc::clone(&self.prepared)));
        for arg in args {
            query = match *arg {
                Arg::Text(v) => query.bind(v),
                Arg::OptText(v) => query.bind(v),
                Arg::BigInt(v) => query.bind(v),
                Arg::OptBigInt(v) => query.bind(v),
                Arg::Int(v) => query.bind(v),
                Arg::Bool(v) => query.bind(v),
                Arg::Bytes(v) => query.bind(v),
            };
        }
        query
    }

    /// The statement as one simple-protocol query, `args` written in as
    /// literals that cannot escape their quotes whatever the session's
    /// settings (see [`literal`]).
    pub(crate) fn render(&self, args: &[Arg<'_>]) -> Result<String> {
        let mut out = String::with_capacity(self.prepared.len() + 64);
        for piece in &self.pieces {
            match piece {
                Piece::Sql(sql) => out.push_str(sql),
                Piece::Param(n) => {
                    let arg = n
                        .checked_sub(1)
                        .and_then(|i| args.get(i))
                        .unwrap_or_else(|| panic!("statement parameter ${n} has no value"));
                    literal(&mut out, *arg)?;
                }
            }
        }
        Ok(out)
    }
}

/// Writes `arg` as a typed SQL literal.
///
/// Text is an escape string (`E'…'`): a quote is doubled and a backslash
/// written as `\\`, which reads the same whether or not
/// `standard_conforming_strings` is on, and the connection's client
/// encoding is UTF-8 (sqlx asks for it at start-up). Numbers are quoted so
/// that no sign or size can change how they parse; bytes are hex, decoded by
/// the server. A NUL, which no Postgres text can hold, is refused.
fn literal(out: &mut String, arg: Arg<'_>) -> Result<()> {
    match arg {
        Arg::Text(v) | Arg::OptText(Some(v)) => {
            if v.contains('\0') {
                return Err(Error::InvalidInput {
                    field: "value",
                    reason: "Postgres text cannot hold a NUL character".to_owned(),
                });
            }
            out.push_str("E'");
            for c in v.chars() {
                match c {
                    '\'' => out.push_str("''"),
                    '\\' => out.push_str("\\\\"),
                    c => out.push(c),
                }
            }
            out.push_str("'::text");
        }
        Arg::OptText(None) => out.push_str("NULL::text"),
        Arg::BigInt(v) | Arg::OptBigInt(Some(v)) => {
            let _ = write!(out, "'{v}'::bigint");
        }
        Arg::OptBigInt(None) => out.push_str("NULL::bigint"),
        Arg::Int(v) => {
            let _ = write!(out, "'{v}'::integer");
        }
        Arg::Bool(v) => out.push_str(if v { "true" } else { "false" }),
        Arg::Bytes(v) => {
            out.reserve(v.len() * 2 + 24);
            out.push_str("decode('");
            for b in v {
                let _ = write!(out, "{b:02x}");
            }
            out.push_str("', 'hex')");
        }
    }
    Ok(())
}

/// Every statement the store sends, for one schema.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) claim: Statement,
    /// `claim` for a transaction-mode pooler, which sends every statement
    /// unprepared: the function call alone, whose own plans the server
    /// connection keeps, where `claim`'s joins would be planned anew each
    /// time.
    pub(crate) claim_unprepared: Statement,
    pub(crate) renew: Statement,
    pub(crate) complete: Statement,
    pub(crate) fail: Statement,
    pub(crate) release: Statement,
    pub(crate) get: Statement,
    pub(crate) watch: Statement,
    pub(crate) delete: Statement,
    pub(crate) sweep: Statement,
}

impl Statements {
    /// The statements of `schema` (a checked plain identifier).
    pub(crate) fn new(schema: &str) -> Self {
        let s = |template: &str| Statement::new(template, schema);
        Self {
            // A hit on a completed record is answered by a plain read,
            // which costs a fraction of a plpgsql call; every other claim
            // is decided by `onceflight_claim_v2`, called only when the
            // read found no such hit. The read applies the function's rules
            // for a completed answer (the same kind, no conflicting
            // fingerprint, before retention by the database's clock), so
            // both give the same answer for the same record; a record the
            // read saw as a hit is one the function, reading at that
            // moment, would also have answered with. Either way the claim
            // is one statement, and a hit writes nothing.
            //
            // The function is an expression (`CASE`), not a lateral
            // subquery: a function scan is a plan node that every execution
            // sets up and tears down, hit or not, which cost a hit about a
            // sixth of its server time. Its answer, an anonymous record,
            // is one column (`decided`, decoded by `answer`): a record
            // cannot be taken apart in SQL without calling the function
            // once per field.
            claim: s(
                "SELECT h.token, h.attempt, h.result, h.completed_at, h.expires_at, \
                        h.db_now, \
                        CASE WHEN h.token IS NULL THEN \
                            {schema}.onceflight_claim_v2($1, $2, $3, $4, $5, $6, $7, $8) \
                        END AS decided \
                 FROM (SELECT) one \
                 LEFT JOIN LATERAL ( \
                     SELECT t.token, t.attempt, t.result, \
                            coalesce(t.completed_at, t.updated_at) AS completed_at, \
                            t.expires_at, clock_timestamp() AS db_now \
                     FROM {schema}.onceflight_records t \
                     WHERE t.key = $1::text AND t.state = 'completed' \
                       AND t.expires_at > clock_timestamp() AND t.kind = $2::text \
                       AND (t.fingerprint IS NULL OR $3::text IS NULL \
                            OR t.fingerprint = $3::text)) h ON true",
            ),
            claim_unprepared: s(
                "SELECT * FROM {schema}.onceflight_claim_v2($1, $2, $3, $4, $5, $6, $7, $8)",
            ),
            renew: s(
                "SELECT outcome, db_now, (rec).* FROM {schema}.onceflight_renew($1, $2, $3, $4)",
            ),
            complete: s("SELECT outcome, db_now, (rec).* \
                 FROM {schema}.onceflight_complete_v2($1, $2, $3, $4)"),
            fail: s("SELECT outcome, db_now, (rec).* \
                 FROM {schema}.onceflight_fail_v2($1, $2, $3, $4, $5)"),
            release: s(
                "SELECT outcome, db_now, (rec).* FROM {schema}.onceflight_release_v2($1, $2, $3)",
            ),
            get: s(
                "SELECT clock_timestamp() AS db_now, r.* FROM {schema}.onceflight_records r \
                 WHERE r.key = $1 AND r.expires_at > clock_timestamp()",
            ),
            // `get` for a waiter, registering its interest in the key.
            watch: s("SELECT db_now, (rec).* FROM {schema}.onceflight_watch($1, $2)"),
            delete: s("SELECT {schema}.onceflight_delete_v2($1) AS deleted"),
            // The next (at most) $2 records after key $1 in key order, and
            // those among them past retention deleted, skipping rows a claim
            // holds so that a sweep never stalls the hot path. Walking the
            // primary key bounds each statement's work by $2 rows, without
            // an index on `expires_at` (which would keep renewals and
            // completions from being HOT updates). `scanned` below $2 means
            // the walk reached the end; `last_key` is where the next
            // statement starts. Keys are never empty, so '' starts the walk.
            // Along with it, up to $2 waiters' registrations that ran out
            // are deleted (`unwatched`).
            sweep: s("WITH scanned AS ( \
                     SELECT key, expires_at FROM {schema}.onceflight_records \
                     WHERE key > $1 ORDER BY key LIMIT $2), \
                 swept AS ( \
                     DELETE FROM {schema}.onceflight_records WHERE key IN ( \
                         SELECT r.key FROM {schema}.onceflight_records r \
                         WHERE r.key IN (SELECT key FROM scanned \
                                         WHERE expires_at <= clock_timestamp()) \
                           AND r.expires_at <= clock_timestamp() \
                         FOR UPDATE SKIP LOCKED) \
                     RETURNING 1), \
                 unwatched AS ( \
                     DELETE FROM {schema}.onceflight_watches WHERE key IN ( \
                         SELECT key FROM {schema}.onceflight_watches \
                         WHERE until <= clock_timestamp() LIMIT $2 FOR UPDATE SKIP LOCKED) \
                     RETURNING 1) \
                 SELECT (SELECT count(*) FROM scanned) AS scanned, \
                        (SELECT max(key) FROM scanned) AS last_key, \
                        (SELECT count(*) FROM swept) AS swept, \
                        (SELECT count(*) FROM unwatched) AS unwatched"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_become_typed_literals() {
        let statement = Statement::new("SELECT {schema}.f($1, $2, $3, $4, $5, $6, $7)", "s_1");
        let sql = statement
            .render(&[
                Arg::Text("it's a \\ key"),
                Arg::OptText(None),
                Arg::BigInt(i64::MIN),
                Arg::OptBigInt(Some(7)),
                Arg::Int(-3),
                Arg::Bool(true),
                Arg::Bytes(b"\x00\xff{"),
            ])
            .expect("render");
        assert_eq!(
            sql,
            "SELECT \"s_1\".f(E'it''s a \\\\ key'::text, NULL::text, \
             '-9223372036854775808'::bigint, '7'::bigint, '-3'::integer, true, \
             decode('00ff7b', 'hex'))"
        );
    }

    #[test]
    fn prepared_text_keeps_its_parameters() {
        let statement = Statement::new("SELECT {schema}.f($1) WHERE x = $2", "onceflight");
        assert_eq!(
            &*statement.prepared,
            "SELECT \"onceflight\".f($1) WHERE x = $2"
        );
    }

    #[test]
    fn a_nul_is_refused_not_sent() {
        let statement = Statement::new("SELECT $1", "s");
        let error = statement
            .render(&[Arg::Text("a\0b")])
            .expect_err("NUL refused");
        assert!(
            matches!(error, Error::InvalidInput { .. }),
            "NUL must be invalid input, got {error:?}"
        );
    }

    #[test]
    fn quotes_cannot_close_the_literal() {
        // Whatever the text, the literal is one token: after removing the
        // escapes, the content equals the input.
        for text in ["'", "\\'", "'; DROP TABLE x; --", "\\\\'' ", "é'\\"] {
            let statement = Statement::new("$1", "s");
            let sql = statement.render(&[Arg::Text(text)]).expect("render");
            let inner = sql
                .strip_prefix("E'")
                .and_then(|s| s.strip_suffix("'::text"))
                .expect("one literal");
            let mut decoded = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\'' => assert_eq!(chars.next(), Some('\''), "an undoubled quote in {sql}"),
                    '\\' => assert_eq!(chars.next(), Some('\\'), "a lone backslash in {sql}"),
                    _ => {}
                }
                decoded.push(c);
            }
            assert_eq!(decoded, text, "round trip of {text:?}");
        }
    }
}

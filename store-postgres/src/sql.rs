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

use chrono::{DateTime, Utc};
use onceflight_core::{Error, ListOrder, ListQuery, Result, StateFilter};
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
    /// `timestamptz`, of a year 1–9999 (a literal needs no sign).
    Timestamp(DateTime<Utc>),
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

    /// The statement's text as it is prepared, its schema spliced in.
    pub(crate) fn text(&self) -> &str {
        &self.prepared
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
                Arg::Timestamp(v) => query.bind(v),
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
        Arg::Timestamp(v) => {
            // Microseconds, the precision of `timestamptz`, in UTC: the
            // literal is the instant exactly, whatever the session's zone.
            let _ = write!(out, "'{}'::timestamptz", v.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
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
    pub(crate) counts: Statement,
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
            // The records within retention whose key starts with $1, counted
            // by kind and state in one pass, with the leases run out
            // (expired or released) and the creation of the oldest record
            // holding a live lease. Every judgment uses one instant of the
            // database's clock (`clock`, read once), the one `db_now`
            // answers. A count reads every record it counts: the table, or
            // the records under a prefix, once.
            counts: s(&format!(
                "WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS now) \
                 SELECT r.kind, r.state, count(*) AS records, \
                        count(*) FILTER (WHERE {over}) AS leases_over, \
                        min(r.created_at) FILTER (WHERE r.state = 'processing' \
                            AND NOT coalesce({over}, false)) AS oldest_live, \
                        {now} AS db_now \
                 FROM {{schema}}.onceflight_records r \
                 WHERE r.expires_at > {now} AND starts_with(r.key, $1::text) \
                 GROUP BY r.kind, r.state",
                now = NOW,
                over = LEASE_OVER,
            )),
        }
    }
}

/// The instant a listing or a count judges by: `clock_timestamp()` read
/// once per statement (the `clock` CTE every such statement starts with),
/// so that the filter and the record's remaining durations agree.
const NOW: &str = "(SELECT now FROM clock)";

/// A `processing` record whose lease is over: expired, or released (a
/// release also ends the lease at its instant). Mirrors
/// `Record::lease_expired` of the record the store decodes from the row.
const LEASE_OVER: &str = "r.state = 'processing' \
     AND (r.lease_expires_at <= (SELECT now FROM clock) OR r.released)";

/// Every column of `onceflight_records` a record is decoded from, except
/// `result`: a listing never reads result bytes, which may be large and
/// are stored out of line (TOAST), so the column is a `NULL`.
const LISTED_COLUMNS: &str = "r.key, r.kind, r.fingerprint, r.state, r.token, r.attempt, \
     r.max_attempts, r.owner, r.lease_expires_at, NULL::bytea AS result, r.error_message, \
     r.error_retryable, r.retry_at, r.created_at, r.updated_at, r.completed_at, r.expires_at";

/// The statement listing one page of `query` in `schema` (a checked plain
/// identifier), after the keyset position `after`, and its values.
///
/// The statement holds only the conditions the query asks for, rather than
/// one statement with every condition switched off by a `NULL` value: each
/// shape is planned for what it filters (a generic plan of a catch-all
/// statement could not know which conditions apply), and sqlx keeps each
/// shape prepared per connection like any other statement.
///
/// Records come in `(created_at, key)` order, keys compared byte by byte
/// (`COLLATE "C"`, the order of Rust's `str`, whatever the database's
/// collation), which the index `onceflight_records_created_at_key` serves:
/// the scan follows the index from the cursor and stops after `limit + 1`
/// matching records, the one past the limit telling that a next page
/// exists. The cursor is a row comparison, which the index takes as its
/// start. Filters are checked on the rows the scan meets, not in the index:
/// an index on `state` or on the lease's end would keep renewals and
/// completions from being HOT updates.
pub(crate) fn listing<'a>(
    schema: &str,
    query: &'a ListQuery,
    after: Option<&'a (DateTime<Utc>, String)>,
) -> (Statement, Vec<Arg<'a>>) {
    let mut args = Vec::new();
    let mut param = |arg: Arg<'a>| {
        args.push(arg);
        format!("${}", args.len())
    };
    let mut sql = format!(
        "WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS now) \
         SELECT {NOW} AS db_now, {LISTED_COLUMNS} \
         FROM {{schema}}.onceflight_records r \
         WHERE r.expires_at > {NOW}"
    );
    match query.filter() {
        StateFilter::Any => {}
        StateFilter::Processing { stuck_only } => {
            sql.push_str(" AND r.state = 'processing'");
            if stuck_only {
                let _ = write!(sql, " AND {LEASE_OVER}");
            }
        }
        StateFilter::Completed => sql.push_str(" AND r.state = 'completed'"),
        StateFilter::Failed { retry_allowed } => {
            sql.push_str(" AND r.state = 'failed'");
            // A failure allows a retry exactly when the failure set
            // `retry_at` (retryable, attempts left: see
            // `onceflight_fail_v2`), which is what the record's
            // `retry_after` is decoded from.
            match retry_allowed {
                None => {}
                Some(true) => sql.push_str(" AND r.retry_at IS NOT NULL"),
                Some(false) => sql.push_str(" AND r.retry_at IS NULL"),
            }
        }
    }
    if let Some(kind) = query.kind() {
        let p = param(Arg::Text(kind.as_str()));
        let _ = write!(sql, " AND r.kind = {p}::text");
    }
    if !query.prefix().is_empty() {
        // `starts_with` compares characters, not patterns: any prefix text
        // (`%`, `_`, `\`, quotes) means itself, with nothing to escape.
        let p = param(Arg::Text(query.prefix()));
        let _ = write!(sql, " AND starts_with(r.key, {p}::text)");
    }
    let (direction, past) = match query.order() {
        ListOrder::OldestFirst => ("ASC", ">"),
        ListOrder::NewestFirst => ("DESC", "<"),
    };
    if let Some((at, key)) = after {
        let at = param(Arg::Timestamp(*at));
        let key = param(Arg::Text(key));
        let _ = write!(
            sql,
            " AND (r.created_at, r.key COLLATE \"C\") {past} ({at}::timestamptz, {key}::text)"
        );
    }
    let limit = param(Arg::BigInt(i64::from(query.limit()) + 1));
    let _ = write!(
        sql,
        " ORDER BY r.created_at {direction}, r.key COLLATE \"C\" {direction} LIMIT {limit}"
    );
    (Statement::new(&sql, schema), args)
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
    fn timestamps_are_exact_utc_literals() {
        let at = DateTime::from_timestamp_micros(1_733_000_000_123_456).expect("an instant");
        let sql = Statement::new("$1", "s")
            .render(&[Arg::Timestamp(at)])
            .expect("render");
        assert_eq!(sql, "'2024-11-30T20:53:20.123456Z'::timestamptz");
    }

    #[test]
    fn a_listing_holds_only_the_conditions_it_asks_for() {
        let everything = ListQuery::new();
        let (statement, args) = listing("s", &everything, None);
        assert_eq!(args.len(), 1, "only the limit: {args:?}");
        for absent in [
            "r.state =",
            "r.kind =",
            "starts_with",
            "r.created_at, r.key COLLATE \"C\") ",
        ] {
            assert!(
                !statement.text().contains(absent),
                "{absent} in {}",
                statement.text()
            );
        }
        let after = (DateTime::UNIX_EPOCH, "a".to_owned());
        let narrow = ListQuery::new()
            .with_filter(StateFilter::Failed {
                retry_allowed: Some(true),
            })
            .with_prefix("p%_")
            .expect("a valid prefix")
            .with_order(ListOrder::OldestFirst);
        let (statement, args) = listing("s", &narrow, Some(&after));
        let text = statement.text();
        assert_eq!(args.len(), 4, "prefix, cursor, limit: {args:?}");
        assert!(text.contains("r.retry_at IS NOT NULL"), "{text}");
        assert!(text.contains("starts_with(r.key, $1::text)"), "{text}");
        assert!(
            text.contains("(r.created_at, r.key COLLATE \"C\") > ($2::timestamptz, $3::text)"),
            "{text}"
        );
        assert!(text.ends_with("LIMIT $4"), "{text}");
        assert!(
            !text.contains("r.result") && text.contains("NULL::bytea AS result"),
            "a listing never reads results: {text}"
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

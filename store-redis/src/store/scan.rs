//! The operator's view on Redis: `list` and `counts` by `SCAN`ning the
//! store's record keys, node by node, since Redis keeps no index and the
//! claim path writes nothing for listings.
//!
//! # Pages and cursors
//!
//! A listing walks the primaries in a fixed order (a single server is one
//! node; a cluster's primaries are ordered by the lowest slot each serves)
//! and, on each, runs `SCAN <cursor> MATCH <record keys> COUNT n` until the
//! node answers cursor 0. Every key found is read in the same round trip as
//! the rest of its batch (a pipeline of `peek`, `lua/peek.lua`: the record
//! as `get` answers it, judged by Redis's clock, without its result).
//!
//! One page does a bounded amount of work: at most [`SCAN_CALLS_PER_PAGE`]
//! `SCAN` calls of `COUNT` [`SCAN_COUNT`], so a listing whose filter
//! matches little returns short, even empty, pages with a cursor to go on.
//! A page holds at most the query's limit, yet one `SCAN` batch may hold
//! more matching records than the room left, and a scan cannot resume in
//! the middle of a batch. So the keys of a batch are put in a fixed order,
//! by their hash tag (part of the key's name) and then by request key; when
//! a batch overflows, the page takes the first records in that order and
//! its cursor names the same `SCAN` cursor again, the last tag taken, how
//! many keys of that tag were passed, and the cursor that `SCAN` call
//! answered (where the batch ended). The next page re-runs that `SCAN` call
//! and passes over the keys it already handled without reading them.
//!
//! A `SCAN` cursor is a position in the node's hash space (its bits
//! reversed), whatever the size of the key table, so the re-run batch
//! covers the same stretch of it when it ends at the same cursor: keys
//! passed over there were handled, or came since. It may end sooner (more
//! keys came, so the batch filled sooner): the keys no longer in it come in
//! a later batch, so a record may be listed twice. It may end later (keys
//! went, or Redis shrank its key table, which merges a stretch not yet
//! visited into the batch): passing over by tag would then pass over keys
//! never read, so the page takes the whole batch again, and its records
//! may be listed twice. A listing retakes a batch [`MAX_RETAKES`] times at
//! most, so it moves on however busy the node (a deletion and the shrink it
//! leads to are two changes); a batch that ends later yet again is passed
//! over by tag, the one case in which a key present all along may be
//! missed. `SCAN` itself may repeat a key when the table shrinks, and a
//! cluster resharded between pages may miss or repeat the keys that moved.
//!
//! Cursors read `r1.<node>.<scan cursor>` or `r1.<node>.<scan cursor>.<tag
//! taken last>.<keys of that tag passed>.<cursor the batch ended at>.<times
//! retaken>`; anything else is refused. Each page is sorted in the
//! query's order by creation instant and key; pages are not in order among
//! themselves (see `ListPage`).

use std::collections::HashSet;

use onceflight_core::{ListCursor, ListOrder, ListPage, ListQuery, Record, StoreStats};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisResult};

use super::*;

/// How many keys one `SCAN` call asks a node to look at (`COUNT`): the
/// batch a page reads in one pipeline. Redis may return somewhat more
/// (it scans whole buckets) or fewer (after `MATCH`).
const SCAN_COUNT: usize = 500;

/// How many `SCAN` calls one page makes at most, so that a listing whose
/// filter matches little answers each page after a few thousand keys
/// looked at, rather than after the whole key space.
const SCAN_CALLS_PER_PAGE: usize = 8;

/// How many times one listing takes a `SCAN` batch again from its start
/// when the batch reaches further than it did (see the module's docs).
const MAX_RETAKES: u8 = 3;

/// The cursors' version: cursors of another shape are refused.
const CURSOR_VERSION: &str = "r1";

/// A node to scan: the single server, or a cluster primary, named by the
/// lowest slot it serves (the cluster connection routes by slot).
#[derive(Clone, Copy, Debug)]
enum Node {
    Single,
    Primary(u16),
}

/// Where a listing stands: the node, its `SCAN` cursor, and, when a batch
/// overflowed a page, how far into that batch the listing got.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Position {
    node: usize,
    cursor: u64,
    passed: Option<Passed>,
}

/// The keys of a re-run batch already handled: those whose tag sorts
/// before `tag`, and the first `count` (by request key) of those with it,
/// in the batch that ended at `ended`, taken again from its start
/// `retakes` times.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Passed {
    tag: String,
    count: usize,
    ended: u64,
    retakes: u8,
}

impl Passed {
    /// What a page that took `batch` (sorted, ending at the `SCAN` cursor
    /// `ended`) up to and including `batch[last]` has handled.
    fn through(batch: &[Found], last: usize, ended: u64, retakes: u8) -> Self {
        let tag = batch[last].tag.clone();
        let count = batch[..=last].iter().filter(|f| f.tag == tag).count();
        Self {
            tag,
            count,
            ended,
            retakes,
        }
    }

    /// How many keys at the start of the re-run `batch` (sorted, ending at
    /// the `SCAN` cursor `ended`) to pass over, and how many times the
    /// batch has now been retaken: none when the batch ends later than it
    /// did (up to [`MAX_RETAKES`] times), else those this names.
    fn handled_in(&self, batch: &[Found], ended: u64) -> (usize, u8) {
        if self.retakes < MAX_RETAKES && hash_space(ended) > hash_space(self.ended) {
            return (0, self.retakes + 1);
        }
        let mut same_tag = 0;
        let handled = batch
            .iter()
            .take_while(|f| match f.tag.as_str().cmp(self.tag.as_str()) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Equal => {
                    same_tag += 1;
                    same_tag <= self.count
                }
                std::cmp::Ordering::Greater => false,
            })
            .count();
        (handled, self.retakes)
    }
}

/// Where the `SCAN` cursor `cursor` stands in the node's hash space, to
/// compare cursors of tables of any size: Redis advances cursors with
/// their bits reversed, and 0, where a scan ends, is past every other.
fn hash_space(cursor: u64) -> u128 {
    if cursor == 0 {
        u128::from(u64::MAX) + 1
    } else {
        u128::from(cursor.reverse_bits())
    }
}

impl Position {
    const START: Position = Position {
        node: 0,
        cursor: 0,
        passed: None,
    };

    fn write(&self) -> ListCursor {
        let mut text = format!("{CURSOR_VERSION}.{}.{}", self.node, self.cursor);
        if let Some(passed) = &self.passed {
            text.push_str(&format!(
                ".{}.{}.{}.{}",
                passed.tag, passed.count, passed.ended, passed.retakes
            ));
        }
        ListCursor::from_store(text)
    }

    /// The position `cursor` names, or `InvalidInput`: a cursor this store
    /// did not write, or one for more nodes than the store now has.
    fn read(cursor: &ListCursor, nodes: usize) -> Result<Self> {
        let invalid = || Error::InvalidInput {
            field: "cursor",
            reason: "is not a cursor this store wrote (or the cluster's primaries changed \
                     since); start again without one"
                .to_owned(),
        };
        let mut parts = cursor.as_str().split('.');
        if parts.next() != Some(CURSOR_VERSION) {
            return Err(invalid());
        }
        let node: usize = number(parts.next()).ok_or_else(invalid)?;
        let cursor: u64 = number(parts.next()).ok_or_else(invalid)?;
        let passed = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (None, None, None, None) => None,
            (Some(tag), Some(count), Some(ended), Some(retakes)) if is_tag(tag) => Some(Passed {
                tag: tag.to_owned(),
                count: number(Some(count)).ok_or_else(invalid)?,
                ended: number(Some(ended)).ok_or_else(invalid)?,
                retakes: number(Some(retakes))
                    .filter(|retakes| *retakes <= MAX_RETAKES)
                    .ok_or_else(invalid)?,
            }),
            _ => return Err(invalid()),
        };
        if parts.next().is_some() || node >= nodes {
            return Err(invalid());
        }
        Ok(Self {
            node,
            cursor,
            passed,
        })
    }
}

/// A decimal number written by [`Position::write`]: digits only, no sign.
fn number<T: std::str::FromStr>(text: Option<&str>) -> Option<T> {
    text.filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse().ok())
}

/// Whether `text` is a hash tag as [`hash_tag`] writes it.
fn is_tag(text: &str) -> bool {
    text.len() == 16
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Escapes the characters Redis's glob patterns give a meaning to.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// A record key a scan found, in the order batches are handled.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Found {
    tag: String,
    key: RequestKey,
}

/// A record read by `peek`, and Redis's clock when it was read.
struct Peeked {
    record: Record,
    now: DateTime<Utc>,
}

impl RedisStore {
    /// The `MATCH` pattern of the store's record keys whose request key
    /// starts with `prefix` (`<prefix>{<tag>}:record:<request key>`).
    fn record_pattern(&self, prefix: &str) -> String {
        format!(
            "{}{{????????????????}}:record:{}*",
            glob_escape(&self.prefix),
            glob_escape(prefix)
        )
    }

    /// The request key and hash tag of the Redis key `name`, if it is one
    /// of this store's record keys.
    fn found(&self, name: &[u8]) -> Option<Found> {
        let name = std::str::from_utf8(name).ok()?;
        let rest = name.strip_prefix(self.prefix.as_str())?.strip_prefix('{')?;
        let (tag, key) = rest.split_at_checked(16)?;
        let key = key.strip_prefix("}:record:")?;
        // The tag is the key's hash: a key that only looks like a record
        // key (written by hand under the prefix) is passed over.
        if hash_tag(key) != tag {
            return None;
        }
        Some(Found {
            tag: tag.to_owned(),
            key: RequestKey::parse_stored(key).ok()?,
        })
    }

    /// The nodes a scan visits, in a fixed order: the single server, or
    /// the cluster's primaries by the lowest slot each serves (`CLUSTER
    /// SLOTS`).
    async fn scan_nodes(&self) -> Result<Vec<Node>> {
        let RedisConnection::Cluster(_) = &self.conn else {
            return Ok(vec![Node::Single]);
        };
        let slots: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(map)?;
        let Value::Array(ranges) = slots else {
            return Err(corrupt(format!("CLUSTER SLOTS answered {slots:?}")));
        };
        // The lowest slot of each primary, named by its address.
        let mut primaries: Vec<(String, u16)> = Vec::new();
        for range in &ranges {
            let (start, address) = slot_range(range)
                .ok_or_else(|| corrupt(format!("CLUSTER SLOTS answered a range {range:?}")))?;
            match primaries.iter_mut().find(|(a, _)| *a == address) {
                Some((_, lowest)) => *lowest = (*lowest).min(start),
                None => primaries.push((address, start)),
            }
        }
        let mut lowest: Vec<u16> = primaries.into_iter().map(|(_, slot)| slot).collect();
        lowest.sort_unstable();
        Ok(lowest.into_iter().map(Node::Primary).collect())
    }

    /// One `SCAN` call on `node`: the next cursor, and the record keys found.
    async fn scan_once(&self, node: Node, cursor: u64, pattern: &str) -> Result<(u64, Vec<Found>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        let reply: Value = match (node, &self.conn) {
            (Node::Primary(slot), RedisConnection::Cluster(conn)) => conn
                .clone()
                .route_command(cmd, primary(slot))
                .await
                .map_err(map)?,
            _ => cmd.query_async(&mut self.conn.clone()).await.map_err(map)?,
        };
        let (next, names): (u64, Vec<Vec<u8>>) = redis::from_redis_value(reply)
            .map_err(|e| corrupt(format!("SCAN answered something else: {e}")))?;
        let mut found: Vec<Found> = names.iter().filter_map(|name| self.found(name)).collect();
        found.sort();
        found.dedup();
        Ok((next, found))
    }

    /// The records of `found` (all on `node`), read in one round trip
    /// without their results; `None` where a record is gone since the scan.
    async fn peek_all(&self, node: Node, found: &[Found]) -> Result<Vec<Option<Peeked>>> {
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipeline = Pipeline::with_capacity(found.len());
        for f in found {
            let [record, _fence] = self.redis_keys(&f.key);
            let mut cmd = Cmd::new();
            cmd.arg("FCALL_RO")
                .arg(&self.library.peek)
                .arg(1)
                .arg(record);
            pipeline.add_command(cmd);
        }
        let mut attempts = 0;
        let values = loop {
            attempts += 1;
            let values = self.pipelined(node, &pipeline).await.map_err(map)?;
            let missing = values.iter().any(|value| {
                matches!(value, Value::ServerError(error)
                    if is_function_missing(&RedisError::from(error.clone())))
            });
            if missing && attempts < LOAD_ATTEMPTS {
                load_library(&mut self.conn.clone(), &self.library)
                    .await
                    .map_err(map)?;
                continue;
            }
            break values;
        };
        if values.len() != found.len() {
            return Err(corrupt(format!(
                "a pipeline of {} reads answered {} replies",
                found.len(),
                values.len()
            )));
        }
        found
            .iter()
            .zip(values)
            .map(|(f, value)| {
                let reply = Reply::parse(value.extract_error().map_err(map)?)?;
                match reply.outcome.as_str() {
                    "none" => Ok(None),
                    "ok" => {
                        self.saw_reply(&reply);
                        Ok(Some(Peeked {
                            record: reply.record(&f.key)?,
                            now: instant(reply.required_int(1, "now")?)?,
                        }))
                    }
                    other => Err(corrupt(format!("peek answered {other:?}"))),
                }
            })
            .collect()
    }

    /// Sends `pipeline` to `node`, each reply (or error) in its place.
    async fn pipelined(&self, node: Node, pipeline: &Pipeline) -> RedisResult<Vec<Value>> {
        let count = pipeline.len();
        match (node, &self.conn) {
            // The keys are in different slots of the one primary: routed to
            // it whole, not by the first key (which would refuse the
            // pipeline as crossing slots).
            (Node::Primary(slot), RedisConnection::Cluster(conn)) => {
                let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                conn.clone()
                    .route_pipeline(pipeline.clone(), 0, count, route)
                    .await
            }
            _ => {
                self.conn
                    .clone()
                    .req_packed_commands(pipeline, 0, count)
                    .await
            }
        }
    }

    /// One page of `query`; see the module's docs.
    pub(super) async fn list_page(&self, query: &ListQuery) -> Result<ListPage> {
        let nodes = self.scan_nodes().await?;
        let mut at = match query.cursor() {
            Some(cursor) => Position::read(cursor, nodes.len())?,
            None => Position::START,
        };
        let pattern = self.record_pattern(query.prefix());
        let limit = query.limit() as usize;
        let mut page: Vec<Record> = Vec::new();
        let mut listed: HashSet<RequestKey> = HashSet::new();
        let mut next = None;
        for _ in 0..SCAN_CALLS_PER_PAGE {
            let node = nodes[at.node];
            let (scan_next, batch) = self.scan_once(node, at.cursor, &pattern).await?;
            let (handled, retakes) = at
                .passed
                .as_ref()
                .map_or((0, 0), |passed| passed.handled_in(&batch, scan_next));
            let found = &batch[handled..];
            let peeked = self.peek_all(node, found).await?;
            let room = limit - page.len();
            // The index in `found` of each record the page may take.
            let mut taken: Vec<(usize, Record)> = Vec::new();
            for (index, peeked) in peeked.into_iter().enumerate() {
                let Some(Peeked { record, .. }) = peeked else {
                    continue;
                };
                if query.accepts(&record) && !listed.contains(&record.key) {
                    taken.push((index, record));
                }
            }
            if taken.len() > room {
                // The batch overflows: take its first records and come back
                // to the same batch, past the last key taken.
                taken.truncate(room);
                let last = taken.last().map_or(0, |(index, _)| *index);
                for (_, record) in taken {
                    listed.insert(record.key.clone());
                    page.push(record);
                }
                at.passed = Some(Passed::through(&batch, handled + last, scan_next, retakes));
                next = Some(at);
                break;
            }
            for (_, record) in taken {
                listed.insert(record.key.clone());
                page.push(record);
            }
            at.passed = None;
            at.cursor = scan_next;
            if scan_next == 0 {
                at.node += 1;
                if at.node == nodes.len() {
                    break;
                }
            }
            next = Some(at.clone());
            if page.len() == limit {
                break;
            }
        }
        page.sort_by(|a, b| {
            let order = (a.created_at, a.key.as_str()).cmp(&(b.created_at, b.key.as_str()));
            match query.order() {
                ListOrder::OldestFirst => order,
                ListOrder::NewestFirst => order.reverse(),
            }
        });
        Ok(ListPage::new(page, next.map(|at| at.write())))
    }

    /// Counts every record under `prefix`: one whole scan of the store's
    /// record keys on every node, reading them in batches. Its cost grows
    /// with the number of records the store holds (the server caches the
    /// answer for a few seconds).
    pub(super) async fn count_all(&self, prefix: &str) -> Result<StoreStats> {
        let pattern = self.record_pattern(prefix);
        let mut stats = StoreStats::default();
        // `SCAN` may return a key twice: each is counted once.
        let mut counted: HashSet<RequestKey> = HashSet::new();
        for node in self.scan_nodes().await? {
            let mut cursor = 0;
            loop {
                let (next, found) = self.scan_once(node, cursor, &pattern).await?;
                for peeked in self.peek_all(node, &found).await?.into_iter().flatten() {
                    if peeked.record.key.as_str().starts_with(prefix)
                        && counted.insert(peeked.record.key.clone())
                    {
                        stats.add(&peeked.record, peeked.now);
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(stats)
    }
}

/// Routes a command to the primary serving `slot`.
fn primary(slot: u16) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
        slot,
        SlotAddr::Master,
    )))
}

/// The first slot of a `CLUSTER SLOTS` range and its primary's address.
fn slot_range(range: &Value) -> Option<(u16, String)> {
    let Value::Array(items) = range else {
        return None;
    };
    let start = match items.first()? {
        Value::Int(start) => u16::try_from(*start).ok()?,
        _ => return None,
    };
    let Value::Array(primary) = items.get(2)? else {
        return None;
    };
    let host = match primary.first()? {
        Value::BulkString(host) => String::from_utf8_lossy(host).into_owned(),
        Value::SimpleString(host) => host.clone(),
        _ => return None,
    };
    let port = match primary.get(1)? {
        Value::Int(port) => *port,
        _ => return None,
    };
    Some((start, format!("{host}:{port}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_the_rest() {
        let positions = [
            Position::START,
            Position {
                node: 2,
                cursor: u64::MAX,
                passed: Some(Passed {
                    tag: "cbf29ce484222325".to_owned(),
                    count: 3,
                    ended: 0,
                    retakes: MAX_RETAKES,
                }),
            },
            Position {
                node: 0,
                cursor: 12,
                passed: Some(Passed {
                    tag: "0000000000000000".to_owned(),
                    count: 1,
                    ended: u64::MAX,
                    retakes: 0,
                }),
            },
        ];
        for position in positions {
            let cursor = ListCursor::parse(position.write().as_str()).expect("printable");
            assert_eq!(Position::read(&cursor, 3).ok(), Some(position));
        }
        for bad in [
            "not-a-cursor",
            "r1",
            "r1.0",
            "r1.3.0",
            "r1.0.x",
            "r1.0.-1",
            "r1.0.0.cbf29ce484222325",
            "r1.0.0.CBF29CE484222325.1",
            "r1.0.0.cbf29ce484222325.1",
            "r1.0.0.cbf29ce484222325.1.2",
            "r1.0.0.cbf29ce484222325.1.2.4",
            "r1.0.0.cbf29ce484222325.1.2.-1",
            "r1.0.0.cbf29ce484222325.1.x.0",
            "r1.0.0.cbf29ce484222325.1.2.0.0",
            "k1.0.00",
        ] {
            let cursor = ListCursor::parse(bad).expect("printable");
            assert!(
                matches!(
                    Position::read(&cursor, 3),
                    Err(Error::InvalidInput {
                        field: "cursor",
                        ..
                    })
                ),
                "{bad:?} was taken for a cursor"
            );
        }
    }

    #[test]
    fn globs_escape_their_wildcards() {
        assert_eq!(glob_escape(r"a*b?c[d]e\f{g}"), r"a\*b\?c\[d\]e\\f{g}");
    }

    fn found(tag: &str, key: &str) -> Found {
        Found {
            tag: tag.to_owned(),
            key: RequestKey::parse(key).expect("valid key"),
        }
    }

    /// The keys of `batch` past the first `handled`.
    fn left(batch: &[Found], handled: usize) -> Vec<&str> {
        batch[handled..].iter().map(|f| f.key.as_str()).collect()
    }

    #[test]
    fn a_rerun_batch_passes_over_the_keys_handled() {
        let batch = vec![
            found("0000000000000001", "a|1"),
            found("0000000000000002", "a|2"),
            found("0000000000000002", "a|3"),
            found("0000000000000003", "a|4"),
        ];
        let passed = Passed::through(&batch, 1, 0b0110, 0);
        assert_eq!(
            passed,
            Passed {
                tag: "0000000000000002".to_owned(),
                count: 1,
                ended: 0b0110,
                retakes: 0,
            }
        );
        // Ending where it did: the keys handled are passed over.
        let (handled, retakes) = passed.handled_in(&batch, 0b0110);
        assert_eq!((left(&batch, handled), retakes), (vec!["a|3", "a|4"], 0));
        // A key that came since among those passed over is passed over too;
        // one past them is read.
        let mut grown = batch.clone();
        grown.insert(0, found("0000000000000000", "a|0"));
        grown.push(found("0000000000000004", "a|5"));
        grown.sort();
        let (handled, _) = passed.handled_in(&grown, 0b0110);
        assert_eq!(left(&grown, handled), ["a|3", "a|4", "a|5"]);
        // Ending sooner (bits reversed, 0b0010 comes before 0b0110): the same.
        let (handled, retakes) = passed.handled_in(&batch[1..], 0b0010);
        assert_eq!(
            (left(&batch[1..], handled), retakes),
            (vec!["a|3", "a|4"], 0)
        );
    }

    #[test]
    fn a_rerun_batch_that_ends_later_is_retaken_a_bounded_number_of_times() {
        let batch = vec![
            found("0000000000000001", "a|1"),
            found("0000000000000002", "a|2"),
            found("0000000000000003", "a|4"),
        ];
        let passed = Passed::through(&batch, 1, 0b0110, 0);
        // 0b0001 comes after 0b0110 with bits reversed, and 0 after all.
        for later in [0b0001, 0] {
            let (handled, retakes) = passed.handled_in(&batch, later);
            assert_eq!((handled, retakes), (0, 1), "ending at {later:#b}");
        }
        let again = Passed::through(&batch, 1, 0b0001, MAX_RETAKES - 1);
        assert_eq!(again.handled_in(&batch, 0), (0, MAX_RETAKES));
        let last = Passed::through(&batch, 1, 0b0001, MAX_RETAKES);
        let (handled, retakes) = last.handled_in(&batch, 0);
        assert_eq!((left(&batch, handled), retakes), (vec!["a|4"], MAX_RETAKES));
    }

    #[test]
    fn cursors_compare_in_hash_space_order() {
        // Redis's reverse-binary order over a table of 8 buckets.
        let order = [0b000_u64, 0b100, 0b010, 0b110, 0b001, 0b101, 0b011, 0b111];
        for pair in order[1..].windows(2) {
            assert!(hash_space(pair[0]) < hash_space(pair[1]), "{pair:?}");
        }
        // 0 is where a scan starts and ends: as an end, past every cursor.
        assert!(order[1..].iter().all(|&c| hash_space(c) < hash_space(0)));
        // A cursor of a table twice the size falls between its neighbours.
        assert!(hash_space(0b100) < hash_space(0b1100));
        assert!(hash_space(0b1100) < hash_space(0b010));
    }
}

//! The conformance cases: one public async function per property of docs/protocol.md
//! §3–§5, each run by every backend through
//! [`conformance_tests!`](crate::conformance_tests). One file per part of the
//! protocol: the claim decision, renewals, fencing, retries, a record's
//! lifetime, waiting, and the guarantees.
//!
//! Results are JSON text so that the same cases pass over the HTTP API,
//! which carries results as JSON.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Expiry, RawStorage, Setup, SuiteConfig, Timing};
use crate::backend::lease_expired_message;
use crate::{
    Claim, ClaimOptions, DEFAULT_RETRY_BACKOFF, Error, Fingerprint, JobError, Kind, Lease,
    MAX_LEASE_TTL, MAX_TOKEN, Owner, Record, RecordState, RequestKey, RequestStore, Token,
};

mod claim;
mod fenced;
mod guarantees;
mod lifetime;
mod listing;
mod renew;
mod retry;
mod wait;

pub use claim::*;
pub use fenced::*;
pub use guarantees::*;
pub use lifetime::*;
pub use listing::*;
pub use renew::*;
pub use retry::*;
pub use wait::*;

pub(crate) fn key(name: &str) -> RequestKey {
    RequestKey::parse(format!("image|{name}")).expect("a valid test key")
}

/// Claim options for kind `image` with a lease of `ttl_units`.
pub(crate) fn options(t: Timing, ttl_units: u32) -> ClaimOptions {
    ClaimOptions::new(Kind::parse("image").expect("valid kind"))
        .with_lease_ttl(t.units(ttl_units))
        .expect("valid lease ttl")
}

pub(crate) fn json(text: &str) -> Bytes {
    Bytes::from(format!("{{\"value\":{text:?}}}"))
}

pub(crate) async fn claim<S: RequestStore>(store: &S, key: &RequestKey, o: &ClaimOptions) -> Claim {
    store
        .claim_or_get(key, o)
        .await
        .unwrap_or_else(|e| panic!("claim_or_get({key}) failed: {e}"))
}

pub(crate) fn acquired(claim: Claim) -> Lease {
    match claim {
        Claim::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

async fn record<S: RequestStore>(store: &S, key: &RequestKey) -> Record {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get({key}) failed: {e}"))
        .unwrap_or_else(|| panic!("expected a record for {key}"))
}

fn assert_lease_lost<T: std::fmt::Debug>(result: crate::Result<T>, what: &str) {
    assert!(
        matches!(result, Err(Error::LeaseLost { .. })),
        "{what}: expected LeaseLost, got {result:?}"
    );
}

/// The parts of a record a refused operation must leave as they were.
fn snapshot(r: &Record) -> impl PartialEq + std::fmt::Debug + use<> {
    (
        r.state,
        r.token,
        r.attempt,
        r.owner.clone(),
        r.kind.clone(),
        r.fingerprint.clone(),
        r.lease_expires_at,
        r.result.clone(),
        r.error.clone(),
        r.updated_at,
        r.expires_at,
    )
}

//! Stores served over HTTP for the conformance suite: each case's store is
//! served in-process and reached through an `HttpStore`, and the setup keeps
//! the store it served, so that the suite can look past the API at its
//! storage ([`RawStorage`]).

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use onceflight_core::testkit::{Expiry, RawStorage, Setup, SuiteConfig};
use onceflight_core::{RequestKey, RequestStore};
use onceflight_server::auth::Tokens;
use onceflight_server::client::HttpStore;

use super::serve_in_process;

/// Opens a fresh store for one case.
pub(crate) type Open<S> = fn(SuiteConfig) -> BoxFuture<'static, S>;

/// Looks at a served store's storage: whether it holds a record for a key.
pub(crate) type Raw<S> = for<'a> fn(&'a S, &'a RequestKey) -> BoxFuture<'a, bool>;

/// Stores opened by `open`, served over HTTP without tokens; `raw` looks at
/// the one a case built, and `expiry` says what its storage does with
/// records past retention as seen through `HttpStore` (whose `sweep` does
/// nothing): [`Expiry::SweptElsewhere`] when they stay until the service
/// sweeps, [`Expiry::ByStorage`] when storage drops them by itself.
pub(crate) struct OverHttp<S> {
    open: Open<S>,
    raw: Raw<S>,
    expiry: Expiry,
    served: Arc<Mutex<Vec<Arc<S>>>>,
}

impl<S> OverHttp<S> {
    pub(crate) fn new(open: Open<S>, raw: Raw<S>, expiry: Expiry) -> Self {
        Self {
            open,
            raw,
            expiry,
            served: Arc::default(),
        }
    }
}

impl<S: RequestStore> Setup for OverHttp<S> {
    type Store = HttpStore;

    fn store(&self, config: SuiteConfig) -> BoxFuture<'static, HttpStore> {
        let (open, served) = (self.open, Arc::clone(&self.served));
        Box::pin(async move {
            let store = Arc::new(open(config).await);
            served
                .lock()
                .expect("the served stores")
                .push(Arc::clone(&store));
            let base = serve_in_process(store, Tokens::default()).await;
            HttpStore::new(&base).expect("a valid base URL")
        })
    }
}

impl<S: RequestStore> RawStorage for OverHttp<S> {
    fn expiry(&self) -> Expiry {
        self.expiry
    }

    async fn raw_record_exists(&self, _client: &HttpStore, key: &RequestKey) -> bool {
        let store = {
            let served = self.served.lock().expect("the served stores");
            // A client does not say which service it talks to; the cases
            // that look at storage build one store each.
            let [store] = served.as_slice() else {
                panic!(
                    "raw_record_exists needs exactly one store per case, this one built {}",
                    served.len()
                );
            };
            Arc::clone(store)
        };
        (self.raw)(&store, key).await
    }
}

//! Bearer tokens and namespaces (docs/protocol.md §7 "Security").
//!
//! Each token maps to a namespace; a caller's keys are stored as
//! `namespace/key`, so keys of one namespace are invisible to another. With
//! no token configured, there is no authentication and no namespace.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use onceflight_core::RequestKey;

use crate::AppState;
use crate::api::error::ApiError;

/// The configured bearer tokens. `Debug` shows namespaces, never tokens.
#[derive(Clone, Default)]
pub struct Tokens {
    namespaces: HashMap<String, Arc<str>>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut namespaces: Vec<_> = self.namespaces.values().map(|n| &**n).collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        f.debug_struct("Tokens")
            .field("namespaces", &namespaces)
            .field("tokens", &"<redacted>")
            .finish()
    }
}

/// A token list that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid token list, entry {entry}: {reason}")]
pub struct TokensError {
    entry: usize,
    reason: String,
}

impl Tokens {
    /// Reads `ONCEFLIGHT_TOKENS`: `ns1:token1,ns2:token2`.
    pub fn from_env_list(list: &str) -> Result<Self, TokensError> {
        Self::from_pairs(
            list.split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(|entry| entry.split_once(':').unwrap_or((entry, ""))),
        )
    }

    /// Reads a tokens file: one `namespace token` pair a line; blank lines
    /// and lines starting with `#` are ignored.
    pub fn from_file_text(text: &str) -> Result<Self, TokensError> {
        Self::from_pairs(
            text.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(|line| {
                    line.split_once(char::is_whitespace)
                        .map_or((line, ""), |(ns, token)| (ns, token.trim()))
                }),
        )
    }

    fn from_pairs<'a>(
        pairs: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, TokensError> {
        let mut tokens = Self::default();
        for (entry, (namespace, token)) in pairs.enumerate() {
            let entry = entry + 1;
            let fail = |reason: &str| TokensError {
                entry,
                reason: reason.to_owned(),
            };
            // Validates the namespace exactly as keys will be built with it.
            let probe = RequestKey::parse("probe").expect("a valid key");
            RequestKey::namespaced(namespace, &probe)
                .map_err(|_| fail("the namespace must be 1–64 characters of [a-z0-9_.-]"))?;
            if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(fail(
                    "the token must be at least 16 characters, without spaces",
                ));
            }
            if tokens
                .namespaces
                .insert(token.to_owned(), Arc::from(namespace))
                .is_some()
            {
                return Err(fail("the same token is listed twice"));
            }
        }
        Ok(tokens)
    }

    /// Adds the tokens of `other`.
    pub fn merge(mut self, other: Tokens) -> Self {
        self.namespaces.extend(other.namespaces);
        self
    }

    /// Whether no token is configured (no authentication).
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    fn namespace(&self, token: &str) -> Option<Arc<str>> {
        self.namespaces.get(token).cloned()
    }
}

/// Who is calling: the namespace their token maps to, if tokens are
/// configured.
#[derive(Clone, Debug)]
pub struct Caller {
    namespace: Option<Arc<str>>,
}

impl Caller {
    /// The key under which this caller's `key` is stored.
    pub fn store_key(&self, key: &RequestKey) -> Result<RequestKey, ApiError> {
        match &self.namespace {
            None => Ok(key.clone()),
            Some(ns) => RequestKey::namespaced(ns, key).map_err(ApiError::from),
        }
    }

    /// The namespace, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The prefix every stored key of this caller starts with: `namespace/`,
    /// or nothing without a namespace.
    pub fn key_prefix(&self) -> String {
        self.namespace
            .as_deref()
            .map_or_else(String::new, |ns| format!("{ns}/"))
    }

    /// The caller's own key of a stored key (the namespace taken off), or
    /// `None` when the stored key is not in the caller's namespace.
    pub fn shown_key<'k>(&self, stored: &'k RequestKey) -> Option<&'k str> {
        match &self.namespace {
            None => Some(stored.as_str()),
            Some(ns) => stored.strip_namespace(ns),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let tokens = state.tokens();
        if tokens.is_empty() {
            return Ok(Caller { namespace: None });
        }
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("expected `Authorization: Bearer <token>`"))?;
        let namespace = tokens
            .namespace(token)
            .ok_or_else(|| ApiError::unauthorized("unknown bearer token"))?;
        Ok(Caller {
            namespace: Some(namespace),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_list_and_file_give_the_same_tokens() {
        let env =
            Tokens::from_env_list("team-a:aaaaaaaaaaaaaaaa1, team-b:bbbbbbbbbbbbbbbb2").unwrap();
        let file = Tokens::from_file_text(
            "# comment\nteam-a aaaaaaaaaaaaaaaa1\n\nteam-b  bbbbbbbbbbbbbbbb2\n",
        )
        .unwrap();
        for tokens in [&env, &file] {
            assert_eq!(
                tokens.namespace("aaaaaaaaaaaaaaaa1").as_deref(),
                Some("team-a")
            );
            assert_eq!(
                tokens.namespace("bbbbbbbbbbbbbbbb2").as_deref(),
                Some("team-b")
            );
            assert!(tokens.namespace("nope").is_none(), "unknown token");
        }
    }

    #[test]
    fn bad_token_lists_are_refused() {
        for bad in [
            "Team:aaaaaaaaaaaaaaaa1",
            "ns:short",
            "ns",
            ":aaaaaaaaaaaaaaaa1",
        ] {
            assert!(
                Tokens::from_env_list(bad).is_err(),
                "{bad:?} must be refused"
            );
        }
        assert!(
            Tokens::from_env_list("a:aaaaaaaaaaaaaaaa1,b:aaaaaaaaaaaaaaaa1").is_err(),
            "a token listed twice"
        );
    }

    #[test]
    fn debug_never_shows_a_token() {
        let tokens = Tokens::from_env_list("ns:secret-secret-secret").unwrap();
        let shown = format!("{tokens:?}");
        assert!(!shown.contains("secret-secret"), "{shown}");
        assert!(shown.contains("ns"), "{shown}");
    }
}

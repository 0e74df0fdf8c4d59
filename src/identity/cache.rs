//! The verified-token cache: keyed by the SHA-256 of the token string (the token is never
//! kept), served only while `now < exp`, emptied when a key is withdrawn.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use lru::LruCache;
use sha2::{Digest, Sha256};

use super::claims::Authenticated;

/// Counters of the verified-token cache, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Entries currently held.
    pub entries: usize,
    /// Requests answered from the cache.
    pub hits: u64,
    /// Requests that needed a full verification.
    pub misses: u64,
}

struct CacheEntry {
    /// What the token says, with `break_glass` from the claim only (the header is read per
    /// request).
    verified: Authenticated,
    exp: u64,
}

/// The current time in seconds since the epoch, from the clock jsonwebtoken checks `exp` with.
pub(super) fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// The cache key of a token: the SHA-256 of its string.
pub(super) fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Verified tokens by digest, at most `identity.cache_max_entries` (0: no cache), with hit and
/// miss counters.
pub(super) struct TokenCache {
    entries: Option<Mutex<LruCache<[u8; 32], CacheEntry>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl TokenCache {
    pub(super) fn new(max_entries: usize) -> TokenCache {
        TokenCache {
            entries: NonZeroUsize::new(max_entries).map(|n| Mutex::new(LruCache::new(n))),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Hit and miss counts and the size of the cache.
    pub(super) fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.entries.as_ref().map_or(0, |c| {
                c.lock().unwrap_or_else(PoisonError::into_inner).len()
            }),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// The verified token of `digest`, if it is cached and not expired (an expired one is
    /// dropped).
    pub(super) fn get(&self, digest: &[u8; 32]) -> Option<Authenticated> {
        let cache = self.entries.as_ref()?;
        let now = now_secs();
        let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = match cache.get(digest) {
            Some(entry) if now < entry.exp => Some(entry.verified.clone()),
            Some(_) => {
                cache.pop(digest);
                None
            }
            None => None,
        };
        drop(cache);
        let counter = if fresh.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        fresh
    }

    /// Remember a verified token until `exp`.
    pub(super) fn put(&self, digest: [u8; 32], verified: &Authenticated, exp: u64) {
        // A token accepted only thanks to the leeway is never served from the cache.
        if now_secs() >= exp {
            return;
        }
        if let Some(cache) = &self.entries {
            let entry = CacheEntry {
                verified: verified.clone(),
                exp,
            };
            cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .put(digest, entry);
        }
    }

    /// Forget every token (a key was withdrawn).
    pub(super) fn clear(&self) {
        if let Some(cache) = &self.entries {
            cache.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }
}

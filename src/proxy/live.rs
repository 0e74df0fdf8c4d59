//! What a request reads of the configuration: one [`Snapshot`] (identity, rules, network
//! policy, GeoIP, clock policy, buffered-path bounds), swapped atomically by a reload
//! ([`crate::server::reload`]).
//!
//! A request takes the current snapshot when it starts and uses it in every phase, so a reload
//! in the middle of a request changes nothing for it.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::identity::Identity;
use crate::network::geoip::GeoIp;
use crate::network::vector::NetPolicy;
use crate::rules::RuleSet;

/// The parts of the configuration a request uses, loaded and ready.
pub struct Snapshot {
    /// The JWT verifier.
    pub identity: Arc<Identity>,
    /// The route rules.
    pub rules: Arc<RuleSet>,
    /// Trusted proxies, device and request ID headers.
    pub net: Arc<NetPolicy>,
    /// The GeoIP/ASN databases, when configured.
    pub geo: Option<Arc<GeoIp>>,
    /// The trusted-time policy.
    pub clock: crate::clock::ClockConfig,
    /// Bounds of the buffered path.
    pub attribution: crate::attribution::config::AttributionConfig,
}

/// The current snapshot, swappable.
pub struct Live(ArcSwap<Snapshot>);

impl Live {
    /// The first snapshot.
    pub fn new(snapshot: Snapshot) -> Live {
        Live(ArcSwap::from_pointee(snapshot))
    }

    /// The snapshot in effect now.
    pub fn current(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// The JWT verifier in effect now.
    pub fn identity(&self) -> Arc<Identity> {
        self.0.load().identity.clone()
    }

    /// The route rules in effect now.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.0.load().rules.clone()
    }

    /// Put `snapshot` in effect for every request that starts from now on.
    pub fn swap(&self, snapshot: Snapshot) {
        self.0.store(Arc::new(snapshot));
    }
}

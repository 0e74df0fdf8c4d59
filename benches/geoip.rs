//! GeoIP + ASN lookup cost: `cargo bench --bench geoip`.
//!
//! Builds a City database (100k IPv4 /24 and 20k IPv6 /48 networks) and an ASN database (50k
//! IPv4 /16-/20 networks) with the integration tests' fixture builder (`mmdb-writer`),
//! memory-maps them through auditgate's [`GeoIp`], and times 1M lookups of addresses of which about half fall in a known network
//! (IPv4 and IPv6 mixed 4:1). The peer, in the same run, is the `maxminddb` crate alone doing
//! the same two lookups and decodes without auditgate's wrapper (address classification,
//! owned strings), so the ratio shows what the wrapper adds. Results also go to
//! target/bench-results/geoip.json.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark that cannot set up its fixture has nothing to measure: it stops with the reason"
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use auditgate::network::geoip::{GeoIp, GeoIpConfig};

const LOOKUPS: usize = 1_000_000;
const ROUNDS: usize = 5;

/// A small deterministic generator (xorshift), so every run looks up the same addresses.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

// The fixture databases the integration tests build.
#[path = "../tests/support/geoip.rs"]
#[allow(dead_code)]
mod fixtures;

const COUNTRIES: [&str; 8] = ["US", "GB", "DE", "FR", "JP", "BR", "IN", "SE"];
const CITIES: [&str; 8] = [
    "Milton",
    "London",
    "Berlin",
    "Paris",
    "Tokyo",
    "Recife",
    "Pune",
    "Linköping",
];

/// A global unicast IPv4 /24 (first octet 1..=223, not 10, 100, 127, 169, 172, 192, 198).
fn public_v4(rng: &mut Rng) -> Ipv4Addr {
    loop {
        let a = (rng.next() % 223 + 1) as u8;
        if ![10, 100, 127, 169, 172, 192, 198].contains(&a) {
            let b = rng.next() as u8;
            let c = rng.next() as u8;
            return Ipv4Addr::new(a, b, c, 0);
        }
    }
}

fn build(dir: &std::path::Path) -> Vec<IpAddr> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut known = Vec::new();
    let mut city_nets = Vec::new();
    for _ in 0..100_000 {
        let net = public_v4(&mut rng);
        city_nets.push(format!("{net}/24"));
        known.push(IpAddr::V4(Ipv4Addr::from(u32::from(net) | 7)));
    }
    for _ in 0..20_000 {
        let net = Ipv6Addr::new(
            0x2a00 | (rng.next() as u16 & 0x0fff),
            rng.next() as u16,
            rng.next() as u16,
            0,
            0,
            0,
            0,
            0,
        );
        city_nets.push(format!("{net}/48"));
        known.push(IpAddr::V6(Ipv6Addr::from(u128::from(net) | 0x1234)));
    }
    let city: Vec<(&str, &str, &str)> = city_nets
        .iter()
        .enumerate()
        .map(|(i, net)| (net.as_str(), COUNTRIES[i % 8], CITIES[i % 8]))
        .collect();
    // ASN networks of /16 to /20 (host bits are ignored by the writer).
    let asn_nets: Vec<String> = (0..50_000u32)
        .map(|i| format!("{}/{}", public_v4(&mut rng), 16 + i % 5))
        .collect();
    let asn: Vec<(&str, u32, &str)> = asn_nets
        .iter()
        .zip(64_512..)
        .map(|(net, number)| (net.as_str(), number, "Example Networks, Inc."))
        .collect();
    std::fs::write(
        dir.join("city.mmdb"),
        fixtures::city_db(&city, 1_700_000_000),
    )
    .unwrap();
    std::fs::write(dir.join("asn.mmdb"), fixtures::asn_db(&asn)).unwrap();
    // The addresses to look up: half known, half random public (mostly unknown), 4:1 v4:v6.
    let mut addrs = Vec::with_capacity(LOOKUPS);
    for i in 0..LOOKUPS {
        let ip = if i % 2 == 0 {
            known[(rng.next() % known.len() as u64) as usize]
        } else if i % 10 == 1 {
            IpAddr::V6(Ipv6Addr::from(
                (0x2a00u128 << 112) | u128::from(rng.next()) << 40,
            ))
        } else {
            IpAddr::V4(Ipv4Addr::from(u32::from(public_v4(&mut rng)) | 9))
        };
        addrs.push(ip);
    }
    addrs
}

fn time(f: impl Fn() -> usize) -> (Duration, usize) {
    let start = Instant::now();
    let found = f();
    (start.elapsed(), found)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = build(dir.path());
    let cfg = GeoIpConfig {
        city_db: Some(dir.path().join("city.mmdb")),
        asn_db: Some(dir.path().join("asn.mmdb")),
        check_interval_secs: 0,
    };
    let geo = GeoIp::load(&cfg, dir.path()).unwrap().unwrap();
    let city = maxminddb::Reader::open_readfile(dir.path().join("city.mmdb")).unwrap();
    let asn = maxminddb::Reader::open_readfile(dir.path().join("asn.mmdb")).unwrap();

    let ours = || {
        addrs
            .iter()
            .filter(|ip| {
                matches!(
                    black_box(geo.lookup(**ip)),
                    auditgate::network::geoip::GeoAnswer::Found(_)
                )
            })
            .count()
    };
    let peer = || {
        let mut found = 0;
        for ip in &addrs {
            let c = city
                .lookup(*ip)
                .and_then(|r| r.decode::<maxminddb::geoip2::City>())
                .ok()
                .flatten();
            let a = asn
                .lookup(*ip)
                .and_then(|r| r.decode::<maxminddb::geoip2::Asn>())
                .ok()
                .flatten();
            if black_box(&c).is_some() || black_box(&a).is_some() {
                found += 1;
            }
        }
        found
    };
    // Warm both (page the files in).
    ours();
    peer();
    let mut ours_ns = Vec::new();
    let mut peer_ns = Vec::new();
    let mut found = 0;
    for round in 0..ROUNDS {
        // Alternate the order (ABBA) so neither always runs first.
        let (a, b) = if round % 2 == 0 {
            let a = time(ours);
            (a, time(peer))
        } else {
            let b = time(peer);
            (time(ours), b)
        };
        found = a.1;
        ours_ns.push(a.0.as_nanos() as f64 / LOOKUPS as f64);
        peer_ns.push(b.0.as_nanos() as f64 / LOOKUPS as f64);
    }
    let ours_med = median(ours_ns.clone());
    let peer_med = median(peer_ns.clone());
    println!("GeoIP + ASN lookup, {LOOKUPS} addresses ({found} found), median of {ROUNDS} rounds");
    println!("  auditgate GeoIp::lookup (city + asn, owned strings)   {ours_med:>8.0} ns/lookup   rounds {ours_ns:.0?}");
    println!("  maxminddb alone (same two lookups and decodes)        {peer_med:>8.0} ns/lookup   rounds {peer_ns:.0?}");
    println!(
        "  ratio auditgate / maxminddb                           {:>8.2}x",
        ours_med / peer_med
    );
    let results = format!(
        "{{\"benchmark\":\"geoip\",\"lookups\":{LOOKUPS},\"found\":{found},\"rounds\":{ROUNDS},\"auditgate_ns_per_lookup\":{ours_med:.1},\"maxminddb_ns_per_lookup\":{peer_med:.1},\"ratio\":{:.3}}}\n",
        ours_med / peer_med
    );
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("geoip.json"), results).unwrap();
}

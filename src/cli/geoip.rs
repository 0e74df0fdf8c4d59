//! `geoip`: what the configured (or given) GeoIP and ASN databases say of some addresses, as
//! the gateway would record it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::outcome::{CliError, Verdict};
use crate::config::Config;
use crate::network::geoip::{GeoAnswer, GeoIp};

/// `auditgate geoip IP...`: one JSON line per address.
pub fn geoip_lookup(
    config: Option<&Path>,
    city_db: Option<PathBuf>,
    asn_db: Option<PathBuf>,
    ips: &[IpAddr],
) -> Result<Verdict, CliError> {
    let (mut cfg, base) = match config {
        Some(path) => (Config::load(path)?.geoip, Config::base_dir(path)),
        None => (Default::default(), PathBuf::new()),
    };
    if city_db.is_some() || asn_db.is_some() {
        cfg.city_db = city_db;
        cfg.asn_db = asn_db;
    }
    let geo = GeoIp::load(&cfg, &base)
        .map_err(CliError::failed)?
        .ok_or_else(|| {
            CliError::Usage(
                "no GeoIP database: give --city-db or --asn-db, or a config with [geoip]".into(),
            )
        })?;
    for ip in ips {
        let line = match geo.lookup(*ip) {
            GeoAnswer::Found(g) => serde_json::json!({"ip": ip.to_string(), "geo": g}),
            GeoAnswer::Unavailable(why) => {
                serde_json::json!({"ip": ip.to_string(), "geo": null, "geo_unavailable": why})
            }
        };
        println!("{line}");
    }
    Ok(Verdict::Clean)
}

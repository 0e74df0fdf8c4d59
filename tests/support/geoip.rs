//! Fixture GeoIP databases, built at test time with `mmdb-writer` in MaxMind's layout (no
//! test reads `../shared`).

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

/// A GeoLite2-City-shaped database: (network, ISO country, English city or "").
pub fn city_db(entries: &[(&str, &str, &str)], build_epoch: u64) -> Vec<u8> {
    #[derive(Serialize)]
    struct Names<'a> {
        en: &'a str,
    }
    #[derive(Serialize)]
    struct Country<'a> {
        iso_code: &'a str,
        names: Names<'a>,
    }
    #[derive(Serialize)]
    struct City<'a> {
        names: Names<'a>,
    }
    #[derive(Serialize)]
    struct Record<'a> {
        country: Country<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        city: Option<City<'a>>,
    }
    let mut w = mmdb_writer::Writer::builder("GeoLite2-City")
        .build_epoch(UNIX_EPOCH + Duration::from_secs(build_epoch))
        .build();
    for (net, country, city) in entries {
        let record = Record {
            country: Country {
                iso_code: country,
                names: Names { en: country },
            },
            city: (!city.is_empty()).then_some(City {
                names: Names { en: city },
            }),
        };
        w.insert(net.parse::<ipnet::IpNet>().unwrap(), &record)
            .unwrap();
    }
    w.to_bytes().unwrap()
}

/// A GeoLite2-ASN-shaped database: (network, ASN, organisation).
pub fn asn_db(entries: &[(&str, u32, &str)]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Record<'a> {
        autonomous_system_number: u32,
        autonomous_system_organization: &'a str,
    }
    let mut w = mmdb_writer::Writer::new("GeoLite2-ASN");
    for (net, asn, org) in entries {
        let record = Record {
            autonomous_system_number: *asn,
            autonomous_system_organization: org,
        };
        w.insert(net.parse::<ipnet::IpNet>().unwrap(), &record)
            .unwrap();
    }
    w.to_bytes().unwrap()
}

/// Replace `path` the way `geoipupdate` does: write a new file, rename it over the old one.
pub fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("download");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

//! Where a client IP is: country and city (a GeoIP2/GeoLite2 City or Country database) and
//! autonomous system (an ASN database), read with `maxminddb` from memory-mapped `.mmdb` files.
//!
//! Owns the `geo` part of each record's network vector. Guarantees:
//!
//! * **No guesses.** Loopback, private, link-local, shared (CGNAT), multicast, documentation
//!   and other special-purpose addresses are never looked up: the record says `geo: null` and
//!   `geo_unavailable` names the class. An address no database knows is `not_found`. A
//!   database that cannot answer (corrupt data) is `lookup_failed`, never an invented value.
//! * **Replaced files are picked up without a restart**, and without a failed request: each
//!   database is checked for a new file (device, inode, size, modification time) every
//!   `check_interval_secs` and on SIGHUP; a new file is opened and checked (its metadata and a
//!   probe lookup) before it replaces the old one, and one that does not open keeps the old one
//!   serving (logged, and counted in `auditgate_geoip_reloads_total{result="failed"}`).
//!   Requests already holding the old database finish with it; the mapping is released with
//!   the last of them.
//! * **The build date is visible**: `auditgate_geoip_build_timestamp_seconds{database}`, so a
//!   database nobody updates for months shows on a dashboard.
//!
//! Memory mapping needs the file to be replaced, not rewritten in place: `geoipupdate` writes a
//! new file and renames it over the old one, which is safe. Truncating or overwriting the mapped
//! file in place can crash the process (SIGBUS) on the next lookup. The README says so.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::config::error::ConfigError;
use crate::record::Geo;

/// `[geoip]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoIpConfig {
    /// A GeoIP2/GeoLite2 City (or Country) database: `geo.country` and `geo.city`.
    #[serde(default)]
    pub city_db: Option<PathBuf>,
    /// A GeoIP2/GeoLite2 ASN database: `geo.asn` and `geo.org`.
    #[serde(default)]
    pub asn_db: Option<PathBuf>,
    /// Check the files for a replacement this often (0: only on SIGHUP).
    #[serde(default = "default_check_interval_secs")]
    pub check_interval_secs: u64,
}

fn default_check_interval_secs() -> u64 {
    60
}

impl GeoIpConfig {
    /// Check the values are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, path) in [
            ("geoip.city_db", &self.city_db),
            ("geoip.asn_db", &self.asn_db),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(ConfigError::invalid(key, "is empty"));
            }
        }
        Ok(())
    }

    /// Whether any database is configured.
    pub fn enabled(&self) -> bool {
        self.city_db.is_some() || self.asn_db.is_some()
    }
}

/// Why a database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoIpError {
    /// A database file could not be read.
    #[error("geoip database {path}: {source}")]
    Io {
        /// The database file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a MaxMind database of the expected kind.
    #[error("geoip database {path} is not a usable MaxMind DB: {reason}")]
    Invalid {
        /// The database file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// Which of the two databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// A GeoIP2/GeoLite2 City, Country or Enterprise database.
    City,
    /// A GeoIP2/GeoLite2 ASN database.
    Asn,
}

impl DbKind {
    /// The metric label (`city`, `asn`).
    pub fn label(self) -> &'static str {
        match self {
            DbKind::City => "city",
            DbKind::Asn => "asn",
        }
    }
}

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileVersion {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileVersion {
    fn of(path: &Path) -> std::io::Result<FileVersion> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(FileVersion {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// One opened database file.
struct OpenDb {
    reader: maxminddb::Reader<maxminddb::Mmap>,
    version: FileVersion,
    build_epoch: u64,
    database_type: String,
}

fn open_db(path: &Path, kind: DbKind) -> Result<OpenDb, GeoIpError> {
    let version = FileVersion::of(path).map_err(|source| GeoIpError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the mapping is read-only but shared (memmap2's default): it stays valid and
    // unchanging as long as the file is replaced by a rename (a new inode) rather than
    // truncated or written in place, which the module documentation and the README require
    // (as `geoipupdate` does).
    #[allow(unsafe_code)]
    let reader =
        unsafe { maxminddb::Reader::open_mmap(path) }.map_err(|e| GeoIpError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let database_type = reader.metadata().database_type.clone();
    let expected = match kind {
        DbKind::City => ["City", "Country", "Enterprise"].as_slice(),
        DbKind::Asn => ["ASN", "ISP"].as_slice(),
    };
    if !expected.iter().any(|e| database_type.contains(e)) {
        return Err(GeoIpError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "its database type is `{database_type}`, expected a {} database",
                expected.join(" or ")
            ),
        });
    }
    // A probe: the search tree and data section must be readable, not only the metadata.
    reader
        .lookup(IpAddr::from([8, 8, 8, 8]))
        .map_err(|e| GeoIpError::Invalid {
            path: path.to_path_buf(),
            reason: format!("a probe lookup failed: {e}"),
        })?;
    Ok(OpenDb {
        build_epoch: reader.metadata().build_epoch,
        database_type,
        reader,
        version,
    })
}

/// One configured database, swappable.
struct Slot {
    kind: DbKind,
    path: PathBuf,
    current: ArcSwap<OpenDb>,
}

impl Slot {
    fn load(kind: DbKind, path: &Path) -> Result<Slot, GeoIpError> {
        let db = open_db(path, kind)?;
        export_build(kind, &db);
        tracing::info!(
            database = kind.label(),
            path = %path.display(),
            database_type = %db.database_type,
            build_epoch = db.build_epoch,
            "geoip database loaded"
        );
        Ok(Slot {
            kind,
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(db),
        })
    }

    /// Open the file again if it changed; keep the old one if the new one fails.
    fn reload_if_changed(&self) -> ReloadResult {
        match FileVersion::of(&self.path) {
            Ok(v) if v == self.current.load().version => return ReloadResult::Unchanged,
            Ok(_) => {}
            Err(e) => {
                // A file briefly missing during a non-atomic replacement: keep serving.
                return self.failed(&GeoIpError::Io {
                    path: self.path.clone(),
                    source: e,
                });
            }
        }
        match open_db(&self.path, self.kind) {
            Ok(db) => {
                export_build(self.kind, &db);
                tracing::info!(
                    database = self.kind.label(),
                    database_type = %db.database_type,
                    build_epoch = db.build_epoch,
                    "geoip database replaced"
                );
                self.current.store(Arc::new(db));
                crate::metrics::global()
                    .geoip_reloads
                    .with_label_values(&[self.kind.label(), "ok"])
                    .inc();
                ReloadResult::Reloaded
            }
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&self, e: &GeoIpError) -> ReloadResult {
        tracing::error!(
            database = self.kind.label(),
            error = %e,
            "a replaced geoip database cannot be used; the previous one keeps serving"
        );
        crate::metrics::global()
            .geoip_reloads
            .with_label_values(&[self.kind.label(), "failed"])
            .inc();
        ReloadResult::Failed
    }
}

fn export_build(kind: DbKind, db: &OpenDb) {
    crate::metrics::global()
        .geoip_build_timestamp
        .with_label_values(&[kind.label()])
        .set(db.build_epoch as f64);
}

/// What [`GeoIp::reload_if_changed`] did to one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// The file is the one already loaded.
    Unchanged,
    /// A new file was opened and is in use.
    Reloaded,
    /// A new file could not be opened; the old one serves on.
    Failed,
}

/// The lookup result for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeoAnswer {
    /// What the databases say of the address (fields they lack are absent).
    Found(Geo),
    /// Why there is no answer: a special-purpose address class, `not_found`, or
    /// `lookup_failed`.
    Unavailable(&'static str),
}

/// The configured databases.
pub struct GeoIp {
    city: Option<Slot>,
    asn: Option<Slot>,
    check_interval: Duration,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp")
            .field("city", &self.city.as_ref().map(|s| &s.path))
            .field("asn", &self.asn.as_ref().map(|s| &s.path))
            .finish()
    }
}

impl GeoIp {
    /// Open the configured databases (relative paths against `base_dir`); `None` when none is
    /// configured. A configured file that does not open is an error: the gateway must not start
    /// believing it records locations it does not.
    pub fn load(cfg: &GeoIpConfig, base_dir: &Path) -> Result<Option<GeoIp>, GeoIpError> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let open = |kind, path: &Option<PathBuf>| {
            path.as_ref()
                .map(|p| Slot::load(kind, &base_dir.join(p)))
                .transpose()
        };
        Ok(Some(GeoIp {
            city: open(DbKind::City, &cfg.city_db)?,
            asn: open(DbKind::Asn, &cfg.asn_db)?,
            check_interval: Duration::from_secs(cfg.check_interval_secs),
        }))
    }

    /// How often the files should be checked (zero: never, only SIGHUP).
    pub fn check_interval(&self) -> Duration {
        self.check_interval
    }

    /// Check both files and swap in replaced ones.
    pub fn reload_if_changed(&self) -> Vec<(DbKind, ReloadResult)> {
        [&self.city, &self.asn]
            .into_iter()
            .flatten()
            .map(|slot| (slot.kind, slot.reload_if_changed()))
            .collect()
    }

    /// Where `ip` is.
    pub fn lookup(&self, ip: IpAddr) -> GeoAnswer {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if let Some(class) = special_purpose(ip) {
            return GeoAnswer::Unavailable(class);
        }
        let mut geo = Geo::default();
        let mut failed = false;
        if let Some(slot) = &self.city {
            let db = slot.current.load();
            match db
                .reader
                .lookup(ip)
                .and_then(|r| r.decode::<maxminddb::geoip2::City>())
            {
                Ok(Some(city)) => {
                    geo.country = city
                        .country
                        .iso_code
                        .or(city.registered_country.iso_code)
                        .map(str::to_string);
                    geo.city = city.city.names.english.map(str::to_string);
                }
                Ok(None) => {}
                Err(_) => failed = true,
            }
        }
        if let Some(slot) = &self.asn {
            let db = slot.current.load();
            match db
                .reader
                .lookup(ip)
                .and_then(|r| r.decode::<maxminddb::geoip2::Asn>())
            {
                Ok(Some(asn)) => {
                    geo.asn = asn.autonomous_system_number;
                    geo.org = asn.autonomous_system_organization.map(str::to_string);
                }
                Ok(None) => {}
                Err(_) => failed = true,
            }
        }
        if geo != Geo::default() {
            GeoAnswer::Found(geo)
        } else if failed {
            GeoAnswer::Unavailable("lookup_failed")
        } else {
            GeoAnswer::Unavailable("not_found")
        }
    }
}

/// The class of a special-purpose address (IANA registries, RFC 6890), which no geolocation
/// database can place; `None` for a global unicast address.
pub fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_unspecified() {
                Some("unspecified")
            } else if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link_local")
            } else if o[0] == 100 && (o[1] & 0xC0) == 64 {
                Some("shared_cgnat")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4.is_broadcast() {
                Some("broadcast")
            } else if v4.is_documentation() {
                Some("documentation")
            } else if o[0] == 0 || o[0] >= 240 || (o[0] == 192 && o[1] == 0 && o[2] == 0) {
                Some("reserved")
            } else if o[0] == 198 && (o[1] & 0xFE) == 18 {
                Some("benchmarking")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unique_local() {
                Some("private")
            } else if v6.is_unicast_link_local() {
                Some("link_local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] == 0x3fff && s[1] < 0x1000) {
                // 2001:db8::/32 and 3fff::/20 (RFC 9637).
                Some("documentation")
            } else if s[0] == 0x2001 && s[1] == 0 {
                // Teredo: the address names a relay and an obfuscated client; databases map it
                // to the relay's IPv4 address, which is not where the client is.
                Some("teredo")
            } else if s[0] == 0x2001 && s[1] == 2 && s[2] == 0 {
                Some("benchmarking")
            } else if s[0] == 0x0064 && s[1] == 0xff9b {
                // 64:ff9b::/96 and 64:ff9b:1::/48: NAT64, translated IPv4 space.
                Some("nat64")
            } else if s[0] & 0xE000 != 0x2000 {
                // Outside 2000::/3, the only range allocated for global unicast.
                Some("reserved")
            } else {
                None
            }
        }
    }
}

/// The fixture databases the integration tests build, shared with the unit tests.
#[cfg(test)]
#[path = "../../tests/support/geoip.rs"]
mod fixtures;

#[cfg(test)]
mod tests {
    use super::fixtures::{asn_db, city_db, replace};
    use super::*;

    fn geo(country: &str, city: Option<&str>, asn: Option<(u32, &str)>) -> GeoAnswer {
        GeoAnswer::Found(Geo {
            country: Some(country.into()),
            city: city.map(str::to_string),
            asn: asn.map(|a| a.0),
            org: asn.map(|a| a.1.to_string()),
        })
    }

    #[test]
    fn lookups_answer_for_ipv4_and_ipv6_and_never_guess() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("city.mmdb"),
            city_db(
                &[
                    ("81.2.69.142/31", "GB", "London"),
                    ("2001:218::/32", "JP", ""),
                ],
                1_700_000_000,
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("asn.mmdb"),
            asn_db(&[("81.2.69.0/24", 20712, "Andrews & Arnold Ltd")]),
        )
        .unwrap();
        let cfg = GeoIpConfig {
            city_db: Some("city.mmdb".into()),
            asn_db: Some("asn.mmdb".into()),
            check_interval_secs: 60,
        };
        let g = GeoIp::load(&cfg, dir.path()).unwrap().unwrap();
        let look = |s: &str| g.lookup(s.parse().unwrap());
        assert_eq!(
            look("81.2.69.142"),
            geo("GB", Some("London"), Some((20712, "Andrews & Arnold Ltd")))
        );
        // The same address as an IPv4-mapped IPv6 address.
        assert_eq!(look("::ffff:81.2.69.143"), look("81.2.69.142"));
        // ASN only.
        assert_eq!(
            look("81.2.69.1"),
            GeoAnswer::Found(Geo {
                asn: Some(20712),
                org: Some("Andrews & Arnold Ltd".into()),
                ..Geo::default()
            })
        );
        assert_eq!(look("2001:218:1::1"), geo("JP", None, None));
        assert_eq!(look("8.8.8.8"), GeoAnswer::Unavailable("not_found"));
        assert_eq!(look("10.0.0.1"), GeoAnswer::Unavailable("private"));
        assert_eq!(look("::1"), GeoAnswer::Unavailable("loopback"));
        assert_eq!(
            crate::metrics::global()
                .geoip_build_timestamp
                .with_label_values(&["city"])
                .get(),
            1_700_000_000.0
        );
    }

    #[test]
    fn a_replaced_file_is_picked_up_and_a_broken_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("city.mmdb");
        // One build epoch for every unit test: the build-date gauge is process-wide.
        std::fs::write(
            &path,
            city_db(&[("81.2.69.0/24", "GB", "London")], 1_700_000_000),
        )
        .unwrap();
        let cfg = GeoIpConfig {
            city_db: Some(path.clone()),
            asn_db: None,
            check_interval_secs: 1,
        };
        let g = GeoIp::load(&cfg, dir.path()).unwrap().unwrap();
        let ip: IpAddr = "81.2.69.142".parse().unwrap();
        assert_eq!(
            g.reload_if_changed(),
            vec![(DbKind::City, ReloadResult::Unchanged)]
        );
        replace(
            &path,
            &city_db(&[("81.2.69.0/24", "IE", "Dublin")], 1_700_000_000),
        );
        assert_eq!(
            g.reload_if_changed(),
            vec![(DbKind::City, ReloadResult::Reloaded)]
        );
        assert_eq!(g.lookup(ip), geo("IE", Some("Dublin"), None));
        // A truncated download and an ASN file in the City slot are refused; Dublin stays.
        replace(&path, b"not a maxmind database");
        assert_eq!(
            g.reload_if_changed(),
            vec![(DbKind::City, ReloadResult::Failed)]
        );
        replace(&path, &asn_db(&[("81.2.69.0/24", 1, "x")]));
        assert_eq!(
            g.reload_if_changed(),
            vec![(DbKind::City, ReloadResult::Failed)]
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            g.reload_if_changed(),
            vec![(DbKind::City, ReloadResult::Failed)]
        );
        assert_eq!(g.lookup(ip), geo("IE", Some("Dublin"), None));
        // At start, a broken or missing file is an error, not a silent "no geo".
        assert!(matches!(
            GeoIp::load(&cfg, dir.path()),
            Err(GeoIpError::Io { .. })
        ));
        std::fs::write(&path, asn_db(&[("81.2.69.0/24", 1, "x")])).unwrap();
        let err = GeoIp::load(&cfg, dir.path()).unwrap_err().to_string();
        assert!(err.contains("GeoLite2-ASN"), "{err}");
    }

    #[test]
    fn special_purpose_addresses_are_never_looked_up() {
        let class = |s: &str| special_purpose(s.parse().unwrap());
        assert_eq!(class("127.0.0.1"), Some("loopback"));
        assert_eq!(class("10.1.2.3"), Some("private"));
        assert_eq!(class("172.16.0.1"), Some("private"));
        assert_eq!(class("192.168.1.1"), Some("private"));
        assert_eq!(class("169.254.1.1"), Some("link_local"));
        assert_eq!(class("100.64.0.1"), Some("shared_cgnat"));
        assert_eq!(class("192.0.2.1"), Some("documentation"));
        assert_eq!(class("224.0.0.1"), Some("multicast"));
        assert_eq!(class("0.0.0.0"), Some("unspecified"));
        assert_eq!(class("240.0.0.1"), Some("reserved"));
        assert_eq!(class("::1"), Some("loopback"));
        assert_eq!(class("fd00::1"), Some("private"));
        assert_eq!(class("fe80::1"), Some("link_local"));
        assert_eq!(class("2001:db8::1"), Some("documentation"));
        assert_eq!(class("3fff:abc::1"), Some("documentation"));
        assert_eq!(class("2001:0:4136:e378::1"), Some("teredo"));
        assert_eq!(class("2001:2::1"), Some("benchmarking"));
        assert_eq!(class("64:ff9b::8.8.8.8"), Some("nat64"));
        assert_eq!(class("::"), Some("unspecified"));
        assert_eq!(class("81.2.69.142"), None);
        assert_eq!(class("2001:218::1"), None);
        assert_eq!(class("8.8.8.8"), None);
    }
}

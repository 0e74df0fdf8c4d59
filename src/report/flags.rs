//! `report flags --from --to`: the accesses a privacy officer reviews first. Each flag is a
//! rule with its parameters in `[reports.flags]`:
//!
//! | flag | raised when |
//! | --- | --- |
//! | `bulk_access` | a user reached more than `bulk_patients_per_hour` distinct patients in one clock hour (UTC) |
//! | `after_hours` | a patient's data was accessed outside `business_hours` in `time_zone` (weekends too, with `weekends_after_hours`) |
//! | `break_glass` | emergency access was declared (every one is for review) |
//! | `watch_list` | a patient of `watch_patients` was accessed |
//! | `self_access` | a user accessed their own record: the token's `fhirUser` is `Patient/ID` or its `patient` claim is the ID, or `staff_patients` maps the user to it |
//! | `first_access` | a user accessed a patient they had not accessed in the `lookback_days` before the window |
//! | `new_country` | a user with earlier accesses in the lookback accessed from a country none of them came from |
//! | `new_network` | the same for the network: the ASN when the GeoIP database knows it, else the /24 (IPv4) or /48 (IPv6) |
//!
//! Only accesses that may have given data out count (status below 400 or no outcome
//! recorded), and only authenticated users' (an unauthenticated request reaches no data).
//! None of these can be a verdict: each is a question for a person, with its evidence.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use chrono::{Datelike, TimeZone, Timelike};

use super::config::FlagsConfig;
use super::requests::Access;
use super::{Report, Section};
use crate::config::error::ConfigError;
use crate::record::Who;

/// Every flag, in the order they are listed.
pub const KINDS: &[&str] = &[
    "bulk_access",
    "after_hours",
    "break_glass",
    "watch_list",
    "self_access",
    "first_access",
    "new_country",
    "new_network",
];

/// The flags' columns.
pub const COLUMNS: &[&str] = &[
    "flag", "time", "user", "patient", "count", "detail", "evidence",
];

/// How many records a flag names as its evidence before it says how many more there are.
const EVIDENCE_SHOWN: usize = 5;

/// Fill `report` with the flags raised by `window` (the accesses of the report's window),
/// given `history` (the accesses of the `lookback_days` before it), for the kinds in `only`
/// (all when empty).
pub fn build(
    report: &mut Report,
    window: &[Access],
    history: &[Access],
    config: &FlagsConfig,
    only: &[String],
) -> Result<(), ConfigError> {
    let (open, close) = config.business_hours()?;
    let tz = config.tz()?;
    let wanted = |kind: &str| only.is_empty() || only.iter().any(|o| o == kind);
    let counted = |a: &&Access| a.may_have_disclosed() && authenticated(a);
    let mut rows: Vec<Vec<String>> = Vec::new();

    // Per access: after hours, break-glass, watch list, self access.
    let watched: HashSet<&str> = config.watch_patients.iter().map(String::as_str).collect();
    for a in window.iter().filter(counted) {
        if a.patients.is_empty() {
            continue;
        }
        let patients = a.patients.iter().cloned().collect::<Vec<_>>().join(" ");
        if wanted("after_hours") {
            if let Some(when) = after_hours(a, &tz, (open, close), config) {
                rows.push(flag_row(
                    "after_hours",
                    a,
                    &patients,
                    1,
                    format!(
                        "local time {when}; business hours {}",
                        config.business_hours
                    ),
                ));
            }
        }
        if wanted("break_glass") && a.break_glass() {
            rows.push(flag_row(
                "break_glass",
                a,
                &patients,
                1,
                "emergency access declared".into(),
            ));
        }
        if wanted("watch_list") {
            for p in a.patients.iter().filter(|p| watched.contains(p.as_str())) {
                rows.push(flag_row(
                    "watch_list",
                    a,
                    p,
                    1,
                    "the patient is on the watch list".into(),
                ));
            }
        }
        if wanted("self_access") {
            for p in &a.patients {
                if let Some(why) = own_record(a, p, config) {
                    rows.push(flag_row("self_access", a, p, 1, why));
                }
            }
        }
    }

    // Bulk access: distinct patients per user per clock hour.
    if wanted("bulk_access") {
        /// A user's accesses in one clock hour, and the distinct patients they named.
        type Hour<'a> = (Vec<&'a Access>, BTreeSet<&'a str>);
        let mut hours: BTreeMap<(String, String), Hour> = BTreeMap::new();
        for a in window.iter().filter(counted) {
            let hour = a.ts().get(..13).unwrap_or("").to_string();
            let entry = hours.entry((a.user(), hour)).or_default();
            entry.0.push(a);
            entry.1.extend(a.patients.iter().map(String::as_str));
        }
        for ((_, hour), (accesses, patients)) in hours {
            if patients.len() > config.bulk_patients_per_hour {
                let first = accesses[0];
                rows.push(vec![
                    "bulk_access".to_string(),
                    first.ts().to_string(),
                    first.user(),
                    String::new(),
                    patients.len().to_string(),
                    format!(
                        "{} distinct patients in the hour from {hour}:00 UTC ({} requests; threshold {})",
                        patients.len(),
                        accesses.len(),
                        config.bulk_patients_per_hour
                    ),
                    evidence_of(&accesses),
                ]);
            }
        }
    }

    // Against the user's history: first access to a patient, new country, new network.
    let mut seen_patients: HashSet<(String, String)> = HashSet::new();
    let mut seen_countries: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut seen_networks: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for a in history.iter().filter(counted) {
        let user = a.user();
        for p in &a.patients {
            seen_patients.insert((user.clone(), p.clone()));
        }
        seen_countries
            .entry(user.clone())
            .or_default()
            .insert(a.country());
        seen_networks.entry(user).or_default().insert(network_of(a));
    }
    let had_history: HashSet<String> = seen_networks.keys().cloned().collect();
    for a in window.iter().filter(counted) {
        let user = a.user();
        if wanted("first_access") {
            for p in &a.patients {
                if seen_patients.insert((user.clone(), p.clone())) {
                    rows.push(flag_row(
                        "first_access",
                        a,
                        p,
                        1,
                        format!(
                            "no access by this user to this patient in the {} days before",
                            config.lookback_days
                        ),
                    ));
                }
            }
        }
        if had_history.contains(&user) {
            let country = a.country();
            let countries = seen_countries.entry(user.clone()).or_default();
            if !countries.contains(&country) {
                if wanted("new_country") {
                    let before = countries
                        .iter()
                        .map(|c| if c.is_empty() { "unknown" } else { c.as_str() })
                        .collect::<Vec<_>>()
                        .join(", ");
                    let shown = if country.is_empty() {
                        "unknown"
                    } else {
                        &country
                    };
                    rows.push(flag_row(
                        "new_country",
                        a,
                        "",
                        1,
                        format!("first access from {shown}; before: {before}"),
                    ));
                }
                countries.insert(country);
            }
            let network = network_of(a);
            let networks = seen_networks.entry(user.clone()).or_default();
            if !networks.contains(&network) {
                if wanted("new_network") {
                    let before = networks.iter().cloned().collect::<Vec<_>>().join(", ");
                    rows.push(flag_row(
                        "new_network",
                        a,
                        "",
                        1,
                        format!("first access from {network}; before: {before}"),
                    ));
                }
                networks.insert(network);
            }
        }
    }

    rows.sort_by(|x, y| (&x[1], &x[0], &x[2], &x[3]).cmp(&(&y[1], &y[0], &y[2], &y[3])));
    let mut counts: BTreeMap<&str, usize> = KINDS.iter().map(|k| (*k, 0)).collect();
    for row in &rows {
        if let Some(n) = counts.get_mut(row[0].as_str()) {
            *n += 1;
        }
    }
    report.fact("accesses in the window", window.len());
    for kind in KINDS.iter().filter(|k| wanted(k)) {
        report.fact(kind, counts[kind]);
    }
    let mut section = Section::new("Flags", COLUMNS);
    section.rows = rows;
    report.sections.push(section);
    Ok(())
}

/// The site's local time of an access (`Tue 23:00 Europe/London`) when it falls outside
/// business hours or on a weekend counted as after hours.
fn after_hours(
    a: &Access,
    tz: &chrono_tz::Tz,
    (open, close): (chrono::NaiveTime, chrono::NaiveTime),
    config: &FlagsConfig,
) -> Option<String> {
    let micros = crate::columnar::rows::micros_of(a.ts())?;
    let local = tz.timestamp_micros(micros).single()?;
    let weekend = matches!(local.weekday(), chrono::Weekday::Sat | chrono::Weekday::Sun);
    let outside = local.time() < open || local.time() >= close;
    (outside || (weekend && config.weekends_after_hours)).then(|| {
        format!(
            "{} {:02}:{:02} {}",
            local.weekday(),
            local.hour(),
            local.minute(),
            config.time_zone
        )
    })
}

fn authenticated(a: &Access) -> bool {
    matches!(a.record.event.who, Who::Authenticated(_))
}

/// Why `patient` is the user's own record, if it is.
fn own_record(a: &Access, patient: &str, config: &FlagsConfig) -> Option<String> {
    let Who::Authenticated(actor) = &a.record.event.who else {
        return None;
    };
    if actor.fhir_user.as_deref() == Some(&format!("Patient/{patient}")) {
        return Some("the token's fhirUser is this patient".into());
    }
    if actor.smart_patient.as_deref() == Some(patient) {
        return Some("the token's patient claim is this patient".into());
    }
    if config.staff_patients.get(&actor.user).map(String::as_str) == Some(patient) {
        return Some("staff_patients maps this user to this patient".into());
    }
    None
}

/// The network an access came from: its ASN when known, else its /24 (IPv4) or /48 (IPv6).
fn network_of(a: &Access) -> String {
    if let Some(asn) = a
        .record
        .event
        .net
        .geo
        .as_ref()
        .and_then(|g| g.as_ref())
        .and_then(|g| g.asn)
    {
        return format!("AS{asn}");
    }
    match a.client_ip().parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ipnet::Ipv4Net::new(ip, 24)
            .map(|n| n.trunc().to_string())
            .unwrap_or_default(),
        Ok(IpAddr::V6(ip)) => ipnet::Ipv6Net::new(ip, 48)
            .map(|n| n.trunc().to_string())
            .unwrap_or_default(),
        Err(_) => a.client_ip().to_string(),
    }
}

/// One flag's row of [`COLUMNS`], about access `a`.
fn flag_row(kind: &str, a: &Access, patient: &str, count: usize, detail: String) -> Vec<String> {
    vec![
        kind.to_string(),
        a.ts().to_string(),
        a.user(),
        patient.to_string(),
        count.to_string(),
        detail,
        a.evidence(),
    ]
}

/// The evidence of the first few accesses, and how many more.
fn evidence_of(accesses: &[&Access]) -> String {
    let mut shown: Vec<String> = accesses
        .iter()
        .take(EVIDENCE_SHOWN)
        .map(|a| a.evidence())
        .collect();
    if accesses.len() > EVIDENCE_SHOWN {
        shown.push(format!("and {} more", accesses.len() - EVIDENCE_SHOWN));
    }
    shown.join(" ")
}

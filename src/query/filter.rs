//! The auditor's filters: which records a query returns, evaluated over Arrow batches of the
//! columnar schema (from Parquet copies and from JSON segments alike), and what a row group's
//! statistics and bloom filters let a reader skip.
//!
//! Within one filter the values are alternatives (`--patient a --patient b`: either); the
//! filters together must all hold. Every filter names the columns it reads
//! ([`Filters::columns`]), so a Parquet reader decodes those first and the rest only for rows
//! that pass (arrow-rs row filters).

use std::net::IpAddr;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch, Scalar, StringArray,
};
use arrow::compute::kernels::{boolean, cmp};
use arrow::datatypes::{Int32Type, TimestampMicrosecondType};
use arrow::error::ArrowError;
use ipnet::IpNet;
use serde::Serialize;

/// Microseconds since the epoch at the start (00:00 UTC) of a `YYYY-MM-DD` day.
pub fn day_start_micros(date: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let day = time::Date::parse(date, &format).ok()?;
    Some(day.midnight().assume_utc().unix_timestamp() * 1_000_000)
}

/// A time as `--since`/`--until` take it: RFC 3339 (`2026-03-01T08:00:00Z`) or a day
/// (`2026-03-01`, its start, UTC); microseconds since the epoch.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Some(micros) = day_start_micros(text) {
        return Ok(micros);
    }
    crate::columnar::rows::micros_of(text).ok_or_else(|| {
        format!("{text:?}: give a day (2026-03-01) or an RFC 3339 time (2026-03-01T08:00:00Z)")
    })
}

/// An HTTP status filter: one code, or a class (`4xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StatusFilter {
    /// Exactly this status.
    Exact(u16),
    /// Any status of this class (`4` for 4xx).
    Class(u16),
}

impl std::str::FromStr for StatusFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(class) = lower.strip_suffix("xx") {
            if let Ok(c @ 1..=5) = class.parse::<u16>() {
                return Ok(StatusFilter::Class(c));
            }
        } else if let Ok(code @ 100..=599) = lower.parse::<u16>() {
            return Ok(StatusFilter::Exact(code));
        }
        Err(format!("{s:?}: a status is a code (403) or a class (4xx)"))
    }
}

/// What a query asks for. Empty lists and `None` do not filter.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Filters {
    /// Records naming any of these patients (`patient_ids`).
    pub patients: Vec<String>,
    /// Records of any of these users (`user_id`, the token's `sub`).
    pub users: Vec<String>,
    /// Tokens of any of these issuers.
    pub issuers: Vec<String>,
    /// Any of these client applications (`client_id`).
    pub clients: Vec<String>,
    /// Any of these actions (C, R, U, D, E).
    pub actions: Vec<String>,
    /// Any of these FHIR interactions (read, search, ...).
    pub interactions: Vec<String>,
    /// Any of these resource types.
    pub resource_types: Vec<String>,
    /// Any of these rules.
    pub rules: Vec<String>,
    /// Any of these HTTP statuses.
    pub statuses: Vec<StatusFilter>,
    /// A client IP inside any of these networks (an address is a /32 or /128).
    pub client_ips: Vec<IpNet>,
    /// Any of these devices.
    pub devices: Vec<String>,
    /// A client IP located in any of these countries (ISO 3166-1 alpha-2).
    pub countries: Vec<String>,
    /// Only records with (true) or without (false) emergency access declared.
    pub break_glass: Option<bool>,
    /// Any of these purposes of use.
    pub purposes: Vec<String>,
    /// Records written at or after this time (µs since the epoch, UTC).
    pub since_micros: Option<i64>,
    /// Records written before this time.
    pub until_micros: Option<i64>,
}

/// `values` of a string column, any of them: null never matches.
fn string_in(column: &ArrayRef, values: &[String]) -> Result<BooleanArray, ArrowError> {
    let mut mask = BooleanArray::from(vec![false; column.len()]);
    for value in values {
        let one = cmp::eq(
            column,
            &Scalar::new(StringArray::from(vec![value.as_str()])),
        )?;
        mask = boolean::or_kleene(&mask, &one)?;
    }
    Ok(mask)
}

/// Rows whose list of strings holds any of `values`.
fn list_has_any(column: &ArrayRef, values: &[String]) -> Result<BooleanArray, ArrowError> {
    let list = column.as_list::<i32>();
    let items = string_in(list.values(), values)?;
    let mut out = BooleanBufferBuilder::new(list.len());
    for row in 0..list.len() {
        let (start, end) = (
            list.value_offsets()[row] as usize,
            list.value_offsets()[row + 1] as usize,
        );
        out.append(!list.is_null(row) && (start..end).any(|i| items.value(i)));
    }
    Ok(BooleanArray::new(out.finish(), None))
}

/// Null as false, so masks can be ANDed and used to filter.
fn definite(mask: BooleanArray) -> BooleanArray {
    if mask.null_count() == 0 {
        return mask;
    }
    let values: Vec<bool> = (0..mask.len())
        .map(|i| mask.is_valid(i) && mask.value(i))
        .collect();
    BooleanArray::from(values)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, ArrowError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("no column {name}")))
}

impl Filters {
    /// True when nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.columns().is_empty()
    }

    /// The columns the filters read.
    pub fn columns(&self) -> Vec<&'static str> {
        let mut columns = Vec::new();
        let mut need = |wanted: bool, name: &'static str| {
            if wanted {
                columns.push(name);
            }
        };
        need(!self.patients.is_empty(), "patient_ids");
        need(!self.users.is_empty(), "user_id");
        need(!self.issuers.is_empty(), "issuer");
        need(!self.clients.is_empty(), "client_id");
        need(!self.actions.is_empty(), "action");
        need(!self.interactions.is_empty(), "interaction");
        need(!self.resource_types.is_empty(), "resource_type");
        need(!self.rules.is_empty(), "rule");
        need(!self.statuses.is_empty(), "status");
        need(!self.client_ips.is_empty(), "client_ip");
        need(!self.devices.is_empty(), "device_id");
        need(!self.countries.is_empty(), "geo_country");
        need(self.break_glass.is_some(), "break_glass");
        need(!self.purposes.is_empty(), "purpose_of_use");
        need(
            self.since_micros.is_some() || self.until_micros.is_some(),
            "ts",
        );
        columns
    }

    /// Which rows of `batch` (which must hold [`Filters::columns`]) match every filter.
    pub fn mask(&self, batch: &RecordBatch) -> Result<BooleanArray, ArrowError> {
        let mut mask = BooleanArray::from(vec![true; batch.num_rows()]);
        let mut and = |part: BooleanArray| -> Result<(), ArrowError> {
            mask = boolean::and(&mask, &definite(part))?;
            Ok(())
        };
        if !self.patients.is_empty() {
            and(list_has_any(column(batch, "patient_ids")?, &self.patients)?)?;
        }
        if !self.purposes.is_empty() {
            and(list_has_any(
                column(batch, "purpose_of_use")?,
                &self.purposes,
            )?)?;
        }
        for (values, name) in [
            (&self.users, "user_id"),
            (&self.issuers, "issuer"),
            (&self.clients, "client_id"),
            (&self.actions, "action"),
            (&self.interactions, "interaction"),
            (&self.resource_types, "resource_type"),
            (&self.rules, "rule"),
            (&self.devices, "device_id"),
            (&self.countries, "geo_country"),
        ] {
            if !values.is_empty() {
                and(string_in(column(batch, name)?, values)?)?;
            }
        }
        if !self.statuses.is_empty() {
            let status = column(batch, "status")?.as_primitive::<Int32Type>();
            let part: BooleanArray = status
                .iter()
                .map(|s| {
                    Some(s.is_some_and(|s| {
                        self.statuses.iter().any(|f| match f {
                            StatusFilter::Exact(code) => s == i32::from(*code),
                            StatusFilter::Class(class) => s / 100 == i32::from(*class),
                        })
                    }))
                })
                .collect();
            and(part)?;
        }
        if !self.client_ips.is_empty() {
            let ips = column(batch, "client_ip")?.as_string::<i32>();
            let part: BooleanArray = ips
                .iter()
                .map(|ip| {
                    Some(
                        ip.and_then(|ip| ip.parse::<IpAddr>().ok())
                            .is_some_and(|ip| self.client_ips.iter().any(|net| net.contains(&ip))),
                    )
                })
                .collect();
            and(part)?;
        }
        if let Some(wanted) = self.break_glass {
            let flag = column(batch, "break_glass")?.as_boolean();
            let part: BooleanArray = flag.iter().map(|b| Some(b == Some(wanted))).collect();
            and(part)?;
        }
        if self.since_micros.is_some() || self.until_micros.is_some() {
            let ts = column(batch, "ts")?.as_primitive::<TimestampMicrosecondType>();
            let part: BooleanArray = ts
                .iter()
                .map(|t| Some(t.is_some_and(|t| self.in_window(t))))
                .collect();
            and(part)?;
        }
        Ok(mask)
    }

    /// Whether a time (µs) is inside the window.
    pub fn in_window(&self, micros: i64) -> bool {
        self.since_micros.is_none_or(|s| micros >= s)
            && self.until_micros.is_none_or(|u| micros < u)
    }

    /// Whether records written between `min` and `max` (µs, inclusive) can be in the window.
    pub fn window_overlaps(&self, min: i64, max: i64) -> bool {
        self.since_micros.is_none_or(|s| max >= s) && self.until_micros.is_none_or(|u| min < u)
    }

    /// Exact values a bloom filter can rule out, per bloom column path
    /// ([`crate::columnar::write::BLOOM_COLUMNS`]): a row group whose filter holds none of a
    /// column's values cannot match.
    pub fn bloom_probes(&self) -> Vec<(&'static str, Vec<String>)> {
        let mut probes = Vec::new();
        if !self.patients.is_empty() {
            probes.push(("patient_ids.list.item", self.patients.clone()));
        }
        if !self.users.is_empty() {
            probes.push(("user_id", self.users.clone()));
        }
        // Only single addresses are exact values; a network is not.
        let hosts: Option<Vec<String>> = self
            .client_ips
            .iter()
            .map(|net| (net.prefix_len() == net.max_prefix_len()).then(|| net.addr().to_string()))
            .collect();
        if let Some(hosts) = hosts.filter(|h| !h.is_empty()) {
            probes.push(("client_ip", hosts));
        }
        if !self.devices.is_empty() {
            probes.push(("device_id", self.devices.clone()));
        }
        probes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columnar::write::segment_batches;
    use crate::fixtures::{rich_event, segment_bytes};

    fn batch() -> (RecordBatch, Vec<crate::record::Record>) {
        let events: Vec<_> = (0..300).map(rich_event).collect();
        let bytes = segment_bytes("n1", 1, crate::record::GENESIS_PREV, &events, 1_764_000_000);
        let (_, _, batches, _) = segment_batches(&bytes, 1000).unwrap();
        let records = crate::columnar::write::lines(&bytes)
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        (batches[0].clone(), records)
    }

    /// The filter's mask equals a plain reading of the records.
    fn agrees(filters: &Filters, oracle: impl Fn(&crate::record::Record) -> bool) -> usize {
        let (batch, records) = batch();
        let mask = filters.mask(&batch).unwrap();
        let expected: Vec<bool> = records.iter().map(&oracle).collect();
        let got: Vec<bool> = (0..mask.len()).map(|i| mask.value(i)).collect();
        assert_eq!(got, expected, "{filters:?}");
        expected.iter().filter(|m| **m).count()
    }

    #[test]
    fn every_filter_agrees_with_the_records() {
        use crate::record::Who;
        let actor = |r: &crate::record::Record| match &r.event.who {
            Who::Authenticated(a) => Some(a.clone()),
            Who::Unauthenticated { .. } | Who::Gateway => None,
        };
        let f = Filters {
            patients: vec!["p3".into(), "p7".into()],
            ..Default::default()
        };
        assert!(
            agrees(&f, |r| r
                .event
                .patients
                .iter()
                .any(|p| p.id == "p3" || p.id == "p7"))
                > 0
        );
        let f = Filters {
            users: vec!["user-2".into()],
            actions: vec!["R".into(), "D".into()],
            ..Default::default()
        };
        assert!(
            agrees(&f, |r| actor(r).is_some_and(|a| a.user == "user-2")
                && matches!(r.event.action.as_str(), "R" | "D"))
                > 0
        );
        let f = Filters {
            statuses: vec!["4xx".parse().unwrap()],
            interactions: vec!["read".into()],
            ..Default::default()
        };
        agrees(&f, |r| {
            r.event
                .outcome
                .as_ref()
                .is_some_and(|o| o.status / 100 == 4)
                && r.event.interaction.as_str() == "read"
        });
        let f = Filters {
            client_ips: vec![
                "10.0.1.0/24".parse().unwrap(),
                "10.0.2.7/32".parse().unwrap(),
            ],
            ..Default::default()
        };
        assert!(
            agrees(&f, |r| r.event.net.client_ip.starts_with("10.0.1.")
                || r.event.net.client_ip == "10.0.2.7")
                > 0
        );
        let f = Filters {
            devices: vec!["dev-1".into()],
            countries: vec!["US".into()],
            ..Default::default()
        };
        agrees(&f, |r| {
            r.event.net.device_id.as_deref() == Some("dev-1")
                && r.event
                    .net
                    .geo
                    .clone()
                    .flatten()
                    .and_then(|g| g.country)
                    .as_deref()
                    == Some("US")
        });
        let f = Filters {
            break_glass: Some(true),
            purposes: vec!["TREAT".into()],
            issuers: vec!["https://idp.example".into()],
            clients: vec!["app-0".into()],
            ..Default::default()
        };
        agrees(&f, |r| {
            actor(r).is_some_and(|a| {
                a.break_glass
                    && a.purpose_of_use.contains(&"TREAT".to_string())
                    && a.client_id.as_deref() == Some("app-0")
            })
        });
        let since = 1_764_000_000_000_000 + 100_000_000;
        let f = Filters {
            since_micros: Some(since),
            until_micros: Some(since + 50_000_000),
            resource_types: vec!["Patient".into()],
            rules: vec!["rule-0".into(), "rule-1".into()],
            ..Default::default()
        };
        assert!(
            agrees(&f, |r| {
                let t = crate::columnar::rows::micros_of(&r.header.ts).unwrap();
                (since..since + 50_000_000).contains(&t)
                    && r.event.resource_type.as_deref() == Some("Patient")
                    && matches!(r.event.rule.as_str(), "rule-0" | "rule-1")
            }) > 0
        );
        assert_eq!(agrees(&Filters::default(), |_| true), 300);
    }

    #[test]
    fn times_parse_as_days_or_rfc3339() {
        assert_eq!(parse_time("1970-01-02"), Ok(86_400_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:01.5Z"), Ok(1_500_000));
        assert_eq!(
            parse_time("2026-03-01T09:00:00+01:00"),
            parse_time("2026-03-01T08:00:00Z")
        );
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn statuses_parse_as_codes_or_classes() {
        assert_eq!("403".parse(), Ok(StatusFilter::Exact(403)));
        assert_eq!("5XX".parse(), Ok(StatusFilter::Class(5)));
        assert!("6xx".parse::<StatusFilter>().is_err());
        assert!("42".parse::<StatusFilter>().is_err());
    }
}

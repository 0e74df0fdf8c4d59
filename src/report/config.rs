//! `[reports]`: what the reports need to know that the trail does not say: the registry of
//! client applications (their names, organisations, and whether they are outside the covered
//! entity), and which purposes of use count as treatment, payment and operations (TPO), for
//! the HIPAA 164.528 disclosures view.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::error::ConfigError;

/// `[reports]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsConfig {
    /// The client applications by `client_id`: `[reports.clients.ID]`.
    #[serde(default)]
    pub clients: BTreeMap<String, ClientApp>,
    /// Purposes of use (HL7 PurposeOfUse codes, as tokens carry them) that are treatment,
    /// payment or health-care operations: accesses for them are not disclosures unless the
    /// client application is external.
    #[serde(default = "default_tpo_purposes")]
    pub tpo_purposes: Vec<String>,
    /// The snooping flags' parameters: `[reports.flags]`.
    #[serde(default)]
    pub flags: FlagsConfig,
}

/// `[reports.flags]`: the parameters of `auditgate report flags`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagsConfig {
    /// Bulk access: a user reaching more distinct patients than this in one clock hour.
    #[serde(default = "default_bulk_patients_per_hour")]
    pub bulk_patients_per_hour: usize,
    /// The site's business hours, local time, `HH:MM-HH:MM`; accesses outside are after-hours.
    #[serde(default = "default_business_hours")]
    pub business_hours: String,
    /// The site's time zone (IANA name, e.g. `Europe/London`, `America/New_York`).
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// Saturdays and Sundays are after-hours all day.
    #[serde(default = "default_true")]
    pub weekends_after_hours: bool,
    /// Patients whose every access is flagged (VIPs, staff, people in the news).
    #[serde(default)]
    pub watch_patients: Vec<String>,
    /// Users' own patient IDs (`user = "patient id"`): a user opening their own record is
    /// flagged, as is one whose token names the patient (`fhirUser` `Patient/ID`, `patient`).
    #[serde(default)]
    pub staff_patients: BTreeMap<String, String>,
    /// How far before the window the first-access and new-country/network flags look for a
    /// user's earlier accesses, in days.
    #[serde(default = "default_lookback_days")]
    pub lookback_days: u32,
}

fn default_bulk_patients_per_hour() -> usize {
    50
}
fn default_business_hours() -> String {
    "07:00-19:00".into()
}
fn default_time_zone() -> String {
    "UTC".into()
}
fn default_true() -> bool {
    true
}
fn default_lookback_days() -> u32 {
    90
}

impl Default for FlagsConfig {
    fn default() -> Self {
        FlagsConfig {
            bulk_patients_per_hour: default_bulk_patients_per_hour(),
            business_hours: default_business_hours(),
            time_zone: default_time_zone(),
            weekends_after_hours: true,
            watch_patients: Vec::new(),
            staff_patients: BTreeMap::new(),
            lookback_days: default_lookback_days(),
        }
    }
}

impl FlagsConfig {
    /// Check the values are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bulk_patients_per_hour == 0 {
            return Err(ConfigError::invalid(
                "reports.flags.bulk_patients_per_hour",
                "must be at least 1",
            ));
        }
        self.business_hours()?;
        self.tz()?;
        if !(1..=3650).contains(&self.lookback_days) {
            return Err(ConfigError::invalid(
                "reports.flags.lookback_days",
                format!("{} is outside 1 to 3650", self.lookback_days),
            ));
        }
        Ok(())
    }

    /// The business hours: (start, end), local time; start before end.
    pub fn business_hours(&self) -> Result<(chrono::NaiveTime, chrono::NaiveTime), ConfigError> {
        let invalid = |why: &str| {
            ConfigError::invalid(
                "reports.flags.business_hours",
                format!("{:?}: {why}", self.business_hours),
            )
        };
        let (start, end) = self
            .business_hours
            .split_once('-')
            .ok_or_else(|| invalid("give HH:MM-HH:MM"))?;
        let time = |t: &str| {
            chrono::NaiveTime::parse_from_str(t.trim(), "%H:%M")
                .map_err(|_| invalid("give HH:MM-HH:MM"))
        };
        let (start, end) = (time(start)?, time(end)?);
        if start >= end {
            return Err(invalid("the start must be before the end"));
        }
        Ok((start, end))
    }

    /// The time zone.
    pub fn tz(&self) -> Result<chrono_tz::Tz, ConfigError> {
        self.time_zone.parse::<chrono_tz::Tz>().map_err(|_| {
            ConfigError::invalid(
                "reports.flags.time_zone",
                format!("{:?} is not an IANA time zone name", self.time_zone),
            )
        })
    }
}

/// One client application of the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientApp {
    /// Its name, as a report shows it.
    pub name: String,
    /// The organisation that runs it (the recipient of what it reads).
    #[serde(default)]
    pub organisation: String,
    /// Run outside the covered entity: what it reads is disclosed.
    #[serde(default)]
    pub external: bool,
}

fn default_tpo_purposes() -> Vec<String> {
    ["TREAT", "ETREAT", "CAREMGT", "HPAYMT", "HOPERAT"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

impl Default for ReportsConfig {
    fn default() -> Self {
        ReportsConfig {
            clients: BTreeMap::new(),
            tpo_purposes: default_tpo_purposes(),
            flags: FlagsConfig::default(),
        }
    }
}

impl ReportsConfig {
    /// Check the values are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (id, app) in &self.clients {
            if id.is_empty() {
                return Err(ConfigError::invalid(
                    "reports.clients",
                    "a client_id is empty",
                ));
            }
            if app.name.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("reports.clients.{id}.name"),
                    "is empty",
                ));
            }
        }
        if let Some(p) = self.tpo_purposes.iter().find(|p| p.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "reports.tpo_purposes",
                format!("{p:?} is empty"),
            ));
        }
        self.flags.validate()
    }

    /// The registry entry of `client_id`.
    pub fn client(&self, client_id: &str) -> Option<&ClientApp> {
        self.clients.get(client_id)
    }

    /// Whether `purpose` is treatment, payment or operations.
    pub fn is_tpo(&self, purpose: &str) -> bool {
        self.tpo_purposes
            .iter()
            .any(|p| p.eq_ignore_ascii_case(purpose))
    }

    /// Load a file holding only these keys (`tpo_purposes`, `[clients.ID]`, `[flags]`),
    /// validated.
    pub fn load(path: &std::path::Path) -> Result<ReportsConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::invalid(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        let config: ReportsConfig = toml::from_str(&text)
            .map_err(|e| ConfigError::invalid(path.display().to_string(), e.to_string()))?;
        config.validate()?;
        Ok(config)
    }
}

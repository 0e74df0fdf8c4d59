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
        Ok(())
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

    /// Load a file holding only these keys (`[clients.ID]`, `tpo_purposes`), validated.
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

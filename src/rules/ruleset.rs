//! The compiled rule set: rules in match order, the compartment tables, and its accessors
//! (loading from the configured files, the policy, the `[[test]]` cases, descriptions).

use super::config::{MethodOverridePolicy, RulesConfig, SubsetPolicy, UnmatchedPolicy};
use super::error::RulesError;
use super::file::{AttributionClaim, CompartmentDef, RuleTest};
use super::template::Template;
use crate::fhir::LocalBases;
use crate::record::{Action, InteractionKind};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Where a template says `Patient/<id>`: the id capture, after a literal `Patient` or a type
/// capture (checked against `Patient` at match time).
#[derive(Debug, Clone, Copy)]
pub(super) enum PatientPair {
    Literal { id: usize },
    TypeCapture { ty: usize, id: usize },
}

#[derive(Debug, Clone)]
pub(super) enum TypeFrom {
    None,
    Literal(String),
    Capture(usize),
}

#[derive(Debug, Clone)]
pub(super) enum Methods {
    Any,
    List(Vec<String>),
}

impl Methods {
    pub(super) fn matches(&self, m: &str) -> bool {
        match self {
            Methods::Any => true,
            Methods::List(l) => l.iter().any(|x| x == m),
        }
    }

    pub(super) fn covers(&self, other: &Methods) -> bool {
        match (self, other) {
            (Methods::Any, _) => true,
            (Methods::List(_), Methods::Any) => false,
            (Methods::List(a), Methods::List(b)) => b.iter().all(|m| a.contains(m)),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub(super) name: String,
    pub(super) methods: Methods,
    pub(super) template: Template,
    pub(super) action: Action,
    pub(super) interaction: InteractionKind,
    pub(super) claim: AttributionClaim,
    pub(super) resource_type: TypeFrom,
    pub(super) resource_id: Option<usize>,
    pub(super) patient_cap: Option<usize>,
    pub(super) patient_pairs: Vec<PatientPair>,
    pub(super) op_cap: Option<usize>,
    pub(super) patient_query: Option<String>,
    pub(super) patient_header: Option<http::HeaderName>,
    pub(super) search: bool,
    pub(super) form_body: bool,
    pub(super) inspect_body: bool,
    pub(super) inspect_response: bool,
    pub(super) oversize: Option<super::file::RuleOversize>,
    pub(super) description: Option<String>,
}

#[derive(Debug, Clone)]
pub(super) struct CompiledFile {
    pub(super) bases: Vec<Vec<String>>,
    pub(super) rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ParamInfo {
    pub(super) bare: bool,
    pub(super) pin: bool,
}

#[derive(Debug, Clone)]
pub(super) struct TypeParams {
    pub(super) def: CompartmentDef,
    pub(super) params: HashMap<String, ParamInfo>,
    /// Every compartment parameter pins (and there is at least one).
    pub(super) compartment_pins: bool,
}

/// The loaded, compiled rules. Immutable; share it behind an `Arc`.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub(super) files: Vec<CompiledFile>,
    pub(super) compartment: HashMap<String, TypeParams>,
    pub(super) operations: HashMap<String, Action>,
    pub(super) unmatched: UnmatchedPolicy,
    pub(super) method_override: MethodOverridePolicy,
    pub(super) elements: SubsetPolicy,
    pub(super) summary: SubsetPolicy,
    pub(super) graphql: SubsetPolicy,
    /// Every method some rule lists; `None` when a rule accepts any (`"*"`).
    pub(super) known_methods: Option<BTreeSet<String>>,
    pub(super) max_form_body_bytes: u64,
    /// This server's FHIR bases: absolute references elsewhere name no local patient.
    pub(super) local_bases: LocalBases,
    /// `rules.public_base_urls`, kept to rebuild `local_bases` with the upstream.
    pub(super) public_base_urls: Vec<String>,
    /// The files' `[[test]]` cases, with the file they came from.
    pub(super) tests: Vec<(PathBuf, RuleTest)>,
}

/// A short description of one rule, for `rules explain` and `check-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleSummary {
    /// The rule's name.
    pub name: String,
    /// Its description, from the rule file.
    pub description: Option<String>,
}

impl RuleSet {
    /// Load and compile every rule file of `cfg`, relative paths resolved against `base_dir`.
    pub fn load(cfg: &RulesConfig, base_dir: &Path) -> Result<RuleSet, RulesError> {
        cfg.validate()?;
        let mut sources = Vec::with_capacity(cfg.files.len());
        for f in &cfg.files {
            let path = if f.is_absolute() {
                f.clone()
            } else {
                base_dir.join(f)
            };
            let text = std::fs::read_to_string(&path).map_err(|source| RulesError::Read {
                path: path.clone(),
                source,
            })?;
            sources.push((path, text, cfg.base_paths.get(f).cloned()));
        }
        Self::compile(cfg, sources)
    }

    /// Compile one rule file given as text (tests, `rules test`), with default limits.
    pub fn from_toml_str(text: &str, unmatched: UnmatchedPolicy) -> Result<RuleSet, RulesError> {
        let cfg = RulesConfig {
            unmatched,
            ..RulesConfig::default()
        };
        Self::compile(
            &cfg,
            vec![(PathBuf::from("<inline>"), text.to_string(), None)],
        )
    }
}

impl RuleSet {
    /// The policy for unmatched requests.
    pub fn unmatched_policy(&self) -> UnmatchedPolicy {
        self.unmatched
    }

    /// Add the EHR's address (`upstream.url`'s `host:port`) under every file's base paths to
    /// the bases whose absolute references are local (with `rules.public_base_urls`).
    pub fn with_upstream(mut self, authority: &str) -> RuleSet {
        let paths = self.base_paths();
        self.local_bases = LocalBases::new(&[authority], &paths, &self.public_base_urls);
        self
    }

    /// This server's FHIR bases (see [`LocalBases`]).
    pub fn local_bases(&self) -> &LocalBases {
        &self.local_bases
    }

    /// Every file's base paths (`/fhir`; the root is empty).
    fn base_paths(&self) -> Vec<String> {
        self.files
            .iter()
            .flat_map(|f| f.bases.iter())
            .map(|segs| segs.iter().map(|s| format!("/{s}")).collect())
            .collect()
    }

    /// The policy for method-override headers and `_method`.
    pub fn method_override_policy(&self) -> MethodOverridePolicy {
        self.method_override
    }

    /// Whether some rule lists `method` (any upper-case method when a rule accepts `"*"`).
    /// A method no rule knows is refused (405 `unknown_method`), whatever the path.
    pub fn knows_method(&self, method: &str) -> bool {
        let upper = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
        upper
            && self
                .known_methods
                .as_ref()
                .is_none_or(|known| known.contains(method))
    }

    /// The largest form body [`RuleSet::attribute_form_body`] reads, in bytes.
    pub fn max_form_body_bytes(&self) -> u64 {
        self.max_form_body_bytes
    }

    /// Every rule, in matching order (bounded set: usable as metric label values).
    pub fn rules(&self) -> Vec<RuleSummary> {
        self.files
            .iter()
            .flat_map(|f| f.rules.iter())
            .map(|r| RuleSummary {
                name: r.name.clone(),
                description: r.description.clone(),
            })
            .collect()
    }

    /// The rule files' `[[test]]` cases, each with its file.
    pub fn tests(&self) -> &[(PathBuf, RuleTest)] {
        &self.tests
    }

    /// A rule's `description`.
    pub fn description(&self, rule: &str) -> Option<&str> {
        self.files
            .iter()
            .flat_map(|f| f.rules.iter())
            .find(|r| r.name == rule)
            .and_then(|r| r.description.as_deref())
    }

    /// The R4 Patient-compartment parameters of a resource type, as loaded.
    pub fn compartment_params(&self, resource_type: &str) -> Option<&CompartmentDef> {
        self.compartment.get(resource_type).map(|t| &t.def)
    }
}

//! The trail as the auditor's listeners read it: this node's journal (its open segment too)
//! merged with the archive's copy of it, verified against the node's checkpoint key, turned
//! into FHIR `AuditEvent`s (IHE BALP) and matched against a search.
//!
//! Guarantees: every answer is verified and proven as `auditgate query` verifies; an answer
//! that cannot be proven is an error, never an unverified list; records after the newest
//! signed checkpoint are left out and said in the coverage.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use crate::archive::{ArchiveStore, Layout};
use crate::query::answer::{answer, Answer, Request};
use crate::query::filter::Filters;
use crate::query::run::QueryError;
use crate::query::source::{self, Fetcher, NodeSources};
use crate::report::auditevent::{events, ExportContext};
use crate::report::render::coverage_line;
use crate::report::requests;
use crate::report::search::AuditSearch;
use crate::tlog::checkpoint::CheckpointVerifier;

/// Where the trail is, for the query plane.
pub struct TrailSources {
    /// This node's journal directory.
    pub journal_dir: PathBuf,
    /// The archive and its layout, when one is configured.
    pub archive: Option<(Arc<dyn ArchiveStore>, Layout)>,
    /// The runtime the archive's calls run on.
    pub runtime: tokio::runtime::Handle,
    /// This node's name.
    pub node: String,
    /// The checkpoint public keys (their text: verifiers are made per search) of this node and
    /// of the other nodes whose archived trails are answered for (`[auditors] node_keys`).
    pub keys: Vec<String>,
    /// The other nodes (named by their keys), read from the archive.
    pub other_nodes: Vec<String>,
    /// Searches running at once, at most (one per core): each holds its readers' buffers, so
    /// this bounds the listeners' memory; more wait their turn.
    pub running: tokio::sync::Semaphore,
}

/// Why a search could not be answered (a 500 or 503, logged without PHI).
#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    /// A local file or archive object could not be read.
    #[error("the trail cannot be read: {0}")]
    Sources(#[from] crate::query::source::SourceError),
    /// The archive could not be listed.
    #[error("the archive cannot be listed: {0}")]
    Archive(#[from] crate::archive::ArchiveError),
    /// The query plane refused or failed (unprovable, not yet checkpointed, unreadable).
    #[error("the answer cannot be proven: {0}")]
    Query(#[from] crate::query::run::QueryError),
    /// A returned record does not parse.
    #[error("a record cannot be read: {0}")]
    Report(#[from] crate::report::ReportError),
    /// The node's checkpoint key does not parse.
    #[error("the checkpoint key cannot be read: {0}")]
    Key(String),
    /// The blocking task running the search did not finish.
    #[error("the search stopped: {0}")]
    Join(String),
}

impl TrailError {
    /// A fixed name of the kind of failure, for the gateway's own log: the message itself may
    /// quote a record (a parse error shows the value it choked on), so it goes only to the
    /// auditor's answer.
    pub fn category(&self) -> &'static str {
        match self {
            TrailError::Sources(_) => "sources",
            TrailError::Archive(_) => "archive",
            TrailError::Query(QueryError::NotYetCheckpointed { .. }) => "not_yet_checkpointed",
            TrailError::Query(QueryError::Unverified { .. }) => "unverified",
            TrailError::Query(QueryError::Scan(_)) => "scan",
            TrailError::Query(QueryError::Source(_)) => "sources",
            TrailError::Report(_) => "record",
            TrailError::Key(_) => "key",
            TrailError::Join(_) => "join",
        }
    }
}

impl TrailSources {
    /// Every node's sources now: this node's journal merged with its archived trail (the
    /// journal's copy wins), and the other nodes' archived trails.
    pub fn sources(&self) -> Result<(Vec<NodeSources>, Fetcher), TrailError> {
        let local = source::local_sources(&self.journal_dir, &self.node)?;
        let mut nodes = vec![];
        match &self.archive {
            Some((store, layout)) => {
                let mut wanted = vec![self.node.clone()];
                wanted.extend(self.other_nodes.iter().cloned());
                let mut archived = self
                    .runtime
                    .block_on(source::archive_sources(store, layout, &wanted))?;
                nodes.push(match archived.remove(&self.node) {
                    Some(a) => source::merge(a, local),
                    None => local,
                });
                nodes.extend(archived.into_values());
            }
            None => nodes.push(local),
        }
        let fetcher = Fetcher {
            store: self.archive.as_ref().map(|(s, _)| s.clone()),
            runtime: self.runtime.clone(),
        };
        Ok((nodes, fetcher))
    }

    /// Every record of the trail that `filters` match, verified and proven. Blocking.
    ///
    /// The journal directory changes under a query: the open segment is sealed (renamed), and
    /// with `delete_local_after_ship` a shipped segment leaves for the archive. An answer that
    /// failed while a local file it was given went away is asked again (at most twice more),
    /// from the sources as they are then; any other failure stands.
    pub fn answer(&self, filters: Filters) -> Result<Answer, TrailError> {
        let keys = self
            .keys
            .iter()
            .map(|k| CheckpointVerifier::from_text(k).map_err(|e| TrailError::Key(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let request = Request {
            filters,
            sort: Vec::new(),
            limit: None,
            verify: true,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let asked = self.sources().map(|(sources, fetcher)| {
                let answered =
                    answer(&request, &sources, &fetcher, &keys).map_err(TrailError::from);
                (answered, sources)
            });
            match asked {
                Ok((Ok(answer), _)) => return Ok(answer),
                Ok((Err(e), sources)) if attempt < 3 && source::local_file_gone(&sources) => {
                    tracing::debug!(
                        category = e.category(),
                        "a journal file moved during a search; asking again"
                    );
                }
                Err(TrailError::Sources(e)) if attempt < 3 => {
                    tracing::debug!(
                        category = TrailError::Sources(e).category(),
                        "a journal file moved while it was listed; asking again"
                    );
                }
                Ok((Err(e), _)) | Err(e) => return Err(e),
            }
        }
    }

    /// Run `work` on the trail on a blocking thread, once a search permit is free.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&TrailSources) -> Result<T, TrailError> + Send + 'static,
    ) -> Result<T, TrailError> {
        let _permit = self
            .running
            .acquire()
            .await
            .map_err(|e| TrailError::Join(e.to_string()))?;
        let trail = self.clone();
        tokio::task::spawn_blocking(move || work(&trail))
            .await
            .unwrap_or_else(|e| Err(TrailError::Join(e.to_string())))
    }

    /// Every event of the trail that `search` matches, in the trail's order, and the coverage
    /// lines of the answer. Blocking.
    pub fn search(
        &self,
        search: &AuditSearch,
        context: &ExportContext,
    ) -> Result<(Vec<Value>, Vec<String>), TrailError> {
        let answer = self.answer(search.filters.clone())?;
        let mut found = Vec::new();
        for access in requests::accesses(&answer)? {
            found.extend(
                events(&access, context)
                    .into_iter()
                    .filter(|e| search.matches(e)),
            );
        }
        let coverage = answer
            .coverage
            .iter()
            .map(|c| coverage_line(c, true))
            .collect();
        Ok((found, coverage))
    }
}

//! The trail a question is asked of, as `query` and `report` take it: a gateway's config, local
//! journal directories, an archive (`s3://BUCKET/PREFIX` or a directory), the nodes, the
//! checkpoint keys that verify them; opened once into every node's sources and answered with
//! the query plane (verified, with proofs, unless `--no-verify`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::archive_args::{open_store, ArchiveLocation};
use super::outcome::CliError;
use crate::archive::Layout;
use crate::query::answer::{answer, Answer, Request};
use crate::query::filter::Filters;
use crate::query::run::QueryError;
use crate::query::source::{self, Fetcher, NodeSources};
use crate::tlog::checkpoint::{CheckpointSigner, CheckpointVerifier};

/// Where the trail is and how it is checked.
#[derive(Debug, Clone, clap::Args)]
pub struct TrailArgs {
    /// Read the journal, the archive and the key of this gateway configuration.
    #[arg(long, short, env = "AUDITGATE_CONFIG", conflicts_with_all = ["journal", "archive"])]
    pub config: Option<PathBuf>,
    /// A local journal directory (one node's; repeatable). Its open segment is read too.
    #[arg(long)]
    pub journal: Vec<PathBuf>,
    /// The archive (`s3://BUCKET/PREFIX` or a directory archive).
    #[command(flatten)]
    pub location: ArchiveLocation,
    /// Only these nodes (repeatable; default: every node found).
    #[arg(long)]
    pub node: Vec<String>,
    /// A node's checkpoint public key (a `.pub` file or the key text; one per node, matched
    /// by its name `auditgate/NODE`). With `--config`, the gateway's own key is used.
    #[arg(long, value_name = "PUBKEY")]
    pub key: Vec<String>,
    /// Answer without checking chains, seals, checkpoints or proofs (said in the output).
    #[arg(long)]
    pub no_verify: bool,
}

/// An opened trail: every node's sources and the keys that verify them.
pub struct Trail {
    /// Runs the archive's reads (kept alive with the fetcher that uses it).
    _runtime: tokio::runtime::Runtime,
    fetcher: Fetcher,
    /// Every node's sources, the local journal's winning over the archive's.
    pub sources: Vec<NodeSources>,
    keys: Vec<CheckpointVerifier>,
    /// Answers are verified and proven (not `--no-verify`).
    pub verify: bool,
    /// The gateway configuration it was opened from (`--config`).
    pub config: Option<crate::config::Config>,
    /// What it was opened from (to list the sources again when a live journal moved).
    args: TrailArgs,
}

/// What asking the trail gave.
pub enum Asked {
    /// The answer.
    Answered(Answer),
    /// The answer cannot be proven; the reason was printed.
    Refused,
}

impl Trail {
    /// Open what `args` name.
    pub fn open(args: &TrailArgs) -> Result<Trail, CliError> {
        let mut keys = Vec::new();
        for key in &args.key {
            keys.push(CheckpointVerifier::load(key).map_err(|e| CliError::part("--key", e))?);
        }
        let mut journals = args.journal.clone();
        let mut archive = match &args.location.archive {
            Some(a) => Some(args.location.config(a).map_err(CliError::Usage)?),
            None => None,
        };
        let mut gateway_config = None;
        if let Some(path) = &args.config {
            let config = crate::config::Config::load(path)?;
            journals.push(config.journal.dir.clone());
            if config.archive.kind != crate::archive::ArchiveKind::None {
                archive = Some(config.archive.clone());
            }
            let signer = CheckpointSigner::load(&config.checkpoint.key_file, false, "")
                .map_err(|e| CliError::part("checkpoint key", e))?;
            keys.push(
                CheckpointVerifier::from_text(signer.public_key())
                    .map_err(|e| CliError::part("checkpoint key", e))?,
            );
            gateway_config = Some(config);
        }
        if journals.is_empty() && archive.is_none() {
            return Err(CliError::Usage(
                "give --journal DIR, --archive ARCHIVE, or --config FILE".into(),
            ));
        }
        let runtime = super::archive_args::runtime()?;
        let store = archive
            .as_ref()
            .map(|cfg| runtime.block_on(open_store(cfg)));
        let fetcher = Fetcher {
            store: store.clone(),
            runtime: runtime.handle().clone(),
        };
        // Every node's sources: the archive's, and each journal's (the local copy wins).
        let mut nodes: BTreeMap<String, NodeSources> = match (&store, &archive) {
            (Some(store), Some(cfg)) => runtime
                .block_on(source::archive_sources(
                    store,
                    &Layout::new(&cfg.prefix),
                    &args.node,
                ))
                .map_err(CliError::failed)?,
            _ => Default::default(),
        };
        for dir in &journals {
            let node = source::node_of_journal(dir)
                .map_err(CliError::failed)?
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "{}: holds no record (not a journal?)",
                        dir.display()
                    ))
                })?;
            let local = source::local_sources(dir, &node).map_err(CliError::failed)?;
            let merged = match nodes.remove(&node) {
                Some(archived) => source::merge(archived, local),
                None => local,
            };
            nodes.insert(node, merged);
        }
        let sources = nodes
            .into_values()
            .filter(|n| args.node.is_empty() || args.node.contains(&n.node))
            .collect();
        Ok(Trail {
            _runtime: runtime,
            fetcher,
            sources,
            keys,
            verify: !args.no_verify,
            config: gateway_config,
            args: args.clone(),
        })
    }

    /// Every record matching `filters`, unsorted and unlimited, verified as this trail is:
    /// the request asked and its answer, or `None` when it was refused (said on stdout).
    pub fn ask_all(&self, filters: Filters) -> Result<Option<(Request, Answer)>, CliError> {
        let request = Request {
            filters,
            sort: Vec::new(),
            limit: None,
            verify: self.verify,
        };
        Ok(match self.ask(&request)? {
            Asked::Answered(answer) => Some((request, answer)),
            Asked::Refused => None,
        })
    }

    /// Answer `request` (its `verify` is this trail's). A trail that cannot prove the answer
    /// prints why and gives [`Asked::Refused`].
    pub fn ask(&self, request: &Request) -> Result<Asked, CliError> {
        self.ask_again(request, 2)
    }

    /// [`Trail::ask`], listing the sources again (at most `tries` times) when the answer
    /// failed while a live journal's file moved (its open segment sealed, a shipped segment
    /// removed): such a failure is the listing's age, not the trail's.
    fn ask_again(&self, request: &Request, tries: u32) -> Result<Asked, CliError> {
        // Blocking reads call into the runtime from this thread (not one of its workers).
        let answered = answer(request, &self.sources, &self.fetcher, &self.keys);
        if answered.is_err() && tries > 0 && source::local_file_gone(&self.sources) {
            return Trail::open(&self.args)?.ask_again(request, tries - 1);
        }
        match answered {
            Ok(answer) => Ok(Asked::Answered(answer)),
            Err(
                e @ (QueryError::Unverified { .. }
                | QueryError::NotYetCheckpointed { .. }
                | QueryError::Scan(crate::query::scan::ScanError::Integrity { .. })),
            ) => {
                println!("REFUSED: {e}");
                println!("the answer cannot be proven from the trail; `auditgate verify` says what is wrong (or --no-verify to see it anyway)");
                Ok(Asked::Refused)
            }
            Err(e) => Err(CliError::failed(e)),
        }
    }
}

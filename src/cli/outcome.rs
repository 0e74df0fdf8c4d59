//! What a command ends with, and the one map from that to the process's exit code.
//!
//! Every subcommand returns `Result<Verdict, CliError>`: [`Verdict::Clean`] is exit 0,
//! [`Verdict::Findings`] (it ran and found a problem: a verification finding, a failed rule
//! test, an unhealthy gateway) is exit 1, and a [`CliError`] (it could not run: a bad config,
//! an unreadable journal, a start-up failure) is exit 2 with one line on standard error,
//! `auditgate: COMMAND: REASON`. No subcommand picks an exit code or prints its own error line.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::error::ConfigError;

/// What a command that ran found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing wrong: exit 0.
    Clean,
    /// It ran and found a problem, already reported on its output: exit 1.
    Findings,
}

impl Verdict {
    /// `Clean` when `ok`, else `Findings`.
    pub fn from_ok(ok: bool) -> Verdict {
        if ok {
            Verdict::Clean
        } else {
            Verdict::Findings
        }
    }
}

/// Why a command could not run: exit 2.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The arguments do not fit together (clap checks the rest).
    #[error("{0}")]
    Usage(String),
    /// The configuration file did not load or is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file named on the command line could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A part of the command's work failed; `part` says which (`rules`, `tls`, `--key`,
    /// `checkpoint key`, ...), `reason` is that part's own error, as it displays it.
    #[error("{part}: {reason}")]
    Part {
        /// Which part: a fixed word.
        part: &'static str,
        /// The part's error message.
        reason: String,
    },
    /// The gateway could not start.
    #[error("cannot start: {0}")]
    Start(String),
    /// Anything else the command could not do, in its own words.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// A part of the command failed with `error`.
    pub fn part(part: &'static str, error: impl std::fmt::Display) -> CliError {
        CliError::Part {
            part,
            reason: error.to_string(),
        }
    }

    /// The command could not do its work: `error`, as it displays itself.
    pub fn failed(error: impl std::fmt::Display) -> CliError {
        CliError::Failed(error.to_string())
    }
}

/// The exit code of a command's result, printing its error line when it could not run.
/// `command` names it in that line (empty: no name).
pub fn exit_code(command: &str, result: Result<Verdict, CliError>) -> ExitCode {
    match result {
        Ok(Verdict::Clean) => ExitCode::SUCCESS,
        Ok(Verdict::Findings) => ExitCode::from(1),
        Err(e) => {
            if command.is_empty() {
                eprintln!("auditgate: {e}");
            } else {
                eprintln!("auditgate: {command}: {e}");
            }
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_findings_and_errors_map_to_0_1_2() {
        assert_eq!(exit_code("x", Ok(Verdict::Clean)), ExitCode::SUCCESS);
        assert_eq!(exit_code("x", Ok(Verdict::Findings)), ExitCode::from(1));
        assert_eq!(
            exit_code("x", Err(CliError::Usage("no".into()))),
            ExitCode::from(2)
        );
        assert_eq!(Verdict::from_ok(false), Verdict::Findings);
        assert_eq!(
            CliError::part("rules", "bad template").to_string(),
            "rules: bad template"
        );
    }
}

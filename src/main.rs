//! The `auditgate` binary: everything lives in the library; see `auditgate::cli`.

fn main() -> std::process::ExitCode {
    auditgate::cli::main()
}

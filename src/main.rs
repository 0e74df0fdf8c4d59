//! The `auditgate` binary: everything lives in the library; see `auditgate::cli`.

// mimalloc instead of glibc malloc: the request path allocates small, short-lived buffers on
// several threads, where glibc's arena locks and consolidation showed up as ~15% of the
// gateway's CPU in profiles (benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    auditgate::cli::main()
}

//! The `keyraft` binary: parses the command line and hands over to the library.
#![forbid(unsafe_code)]

use clap::Parser as _;

// glibc's malloc spent ~15 % of a lookup-bound realm's CPU in `_int_malloc` and
// `_int_realloc` (proof buffers, decoded pages, HTTP/2 frames allocated on one worker and freed
// on another); mimalloc's per-thread free lists do not (docs/decisions.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = keyraft::cli::Cli::parse();
    keyraft::cli::init_tracing(cli.log_format);
    // Every TLS configuration names ring itself; this covers libraries that do not.
    keyraft_proto::tls::install_default_provider();
    match keyraft::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(keyraft::cli::Exit(code)) = e.downcast_ref() {
                return std::process::ExitCode::from(*code);
            }
            if reader_went_away(e.as_ref()) {
                // `keyraft history ... | head`: the reader has all it wanted.
                return std::process::ExitCode::SUCCESS;
            }
            eprintln!("error: {}", with_causes(e.as_ref()));
            std::process::ExitCode::from(keyraft::cli::exit_code(e.as_ref()))
        }
    }
}

/// `e`'s message followed by each cause's that it does not already say: a configuration
/// error names the setting, its cause what is wrong with it, and the operator needs both.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

/// Whether `e` (or what caused it) is a write to a pipe whose reader has closed it.
fn reader_went_away(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) {
            return true;
        }
        cause = c.source();
    }
    false
}

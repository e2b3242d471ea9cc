//! `keyraft verifier`: a third-party verifier daemon.

use std::path::PathBuf;

/// Options of `keyraft verifier`.
#[derive(Debug, clap::Args)]
pub struct VerifierArgs {
    /// The verifier's configuration file (TOML: data_dir, realm_file, signing_key_file,
    /// endpoints; docs/operations.md, section "Verifiers").
    #[arg(long)]
    pub config: PathBuf,
}

/// Runs the verifier until ctrl-c, SIGTERM, or a mismatch (which exits non-zero after writing
/// evidence).
pub fn run(args: &VerifierArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = keyraft_verifier::Config::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let verifier = keyraft_verifier::run(config, shutdown.clone());
        tokio::pin!(verifier);
        tokio::select! {
            stopped = &mut verifier => stopped,
            () = crate::server_cmd::shutdown_signal() => {
                shutdown.cancel();
                verifier.await
            }
        }
    })?;
    Ok(())
}

//! `keyraft server`: one replica.

use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Options of `keyraft server`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The node's configuration file (TOML; `keyraft dev` writes examples, and
    /// docs/operations.md, section "Configuration", describes the keys).
    #[arg(long)]
    pub config: PathBuf,
    /// Bootstrap the cluster with the configured `[[voters]]` (once, on one node; refused
    /// when the cluster is already initialised).
    #[arg(long)]
    pub init: bool,
    /// `--init` on this node's first start only: when its data directory holds no Raft log
    /// yet (does not exist or is empty). For a container whose command line cannot change
    /// between starts (`keyraft cluster-config`, docker/compose.yaml); later starts join the
    /// cluster that first start made.
    #[arg(long, conflicts_with = "init")]
    pub init_if_new: bool,
}

/// Whether `data_dir` is a new node's: it does not exist or holds nothing.
pub fn data_dir_is_new(data_dir: &std::path::Path) -> std::io::Result<bool> {
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// Completes on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Runs a replica until ctrl-c or SIGTERM.
pub fn run(args: &ServerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let loaded = keyraft_server::NodeConfig::load(&args.config)?;
    let data_dir = &loaded.config.data_dir;
    let init = args.init
        || (args.init_if_new
            && data_dir_is_new(data_dir).map_err(|e| format!("data directory {}: {e}", data_dir.display()))?);
    if args.init_if_new {
        let what = if init { "new: initialising the cluster" } else { "not new: not initialising" };
        tracing::info!(data_dir = %data_dir.display(), "--init-if-new: the data directory is {what}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listeners = keyraft_server::Listeners::bind(&loaded.config).await?;
        let shutdown = CancellationToken::new();
        let replica = keyraft_server::run(loaded, listeners, init, shutdown.clone());
        tokio::pin!(replica);
        tokio::select! {
            stopped = &mut replica => stopped,
            () = shutdown_signal() => {
                shutdown.cancel();
                replica.await
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_is_new_while_missing_or_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        assert!(data_dir_is_new(&dir).unwrap(), "missing");
        std::fs::create_dir(&dir).unwrap();
        assert!(data_dir_is_new(&dir).unwrap(), "empty (a new volume)");
        std::fs::create_dir(dir.join("log")).unwrap();
        assert!(!data_dir_is_new(&dir).unwrap(), "a node that started before");
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(data_dir_is_new(&file).is_err(), "not a directory");
    }
}

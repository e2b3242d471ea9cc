//! `keyraft restore`: a new replica data directory from a backup file.

use std::io::Write;
use std::path::PathBuf;

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// Options of `keyraft restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup file (`keyraft admin backup --out FILE`).
    pub file: PathBuf,
    /// The data directory to create (new or empty); the `data_dir` of the new node's config.
    #[arg(long, required_unless_present = "check")]
    pub data_dir: Option<PathBuf>,
    /// The storage engine of the new data directory: sled or redb (the new node's
    /// `storage.engine`; a backup from either engine restores into either).
    #[arg(long, default_value = "sled", conflicts_with = "check")]
    pub engine: keyraft_server::config::EngineKind,
    /// Only check the file (its digest and header) and print what it holds.
    #[arg(long, conflicts_with = "data_dir")]
    pub check: bool,
}

/// `keyraft restore`.
pub fn run(args: &RestoreArgs, out: &mut dyn Write) -> CmdResult {
    let Some(data_dir) = &args.data_dir else {
        let h = keyraft_server::backup::check(&args.file)?;
        writeln!(
            out,
            "{}: a whole backup of realm {:?} from node {}: epoch {}, Raft log index {} (term {}), snapshot of {} bytes",
            args.file.display(),
            h.realm,
            h.node_id,
            h.epoch,
            h.last_log_index,
            h.last_log_term,
            h.snapshot_bytes
        )?;
        return Ok(());
    };
    let h = keyraft_server::backup::restore(&args.file, data_dir, args.engine)?;
    writeln!(
        out,
        "restored realm {:?} at epoch {} (Raft log index {}) from node {}'s backup into {} ({} databases: \
         the new node's config needs storage.engine = \"{}\")",
        h.realm,
        h.epoch,
        h.last_log_index,
        h.node_id,
        data_dir.display(),
        args.engine.name(),
        args.engine.name()
    )?;
    writeln!(
        out,
        "next: start a replica on it with a NEW node id (never {} or another existing id), then add it: \
         keyraft admin --peer LEADER add-learner --id ID --peer-addr ... --public-addr ...; it catches up from the log",
        h.node_id
    )?;
    Ok(())
}

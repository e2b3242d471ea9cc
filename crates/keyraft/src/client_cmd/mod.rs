//! Client commands: `keygen`, `register`, `update`, `lookup`, `history`, `watch`, `verify-proof`. Every answer printed was
//! verified with `keyraft_core`.
//!
//! One module per command (`keys` holds `keygen` and `key migrate`, `update` both `register`
//! and `update`); this one holds what they share: which realm to talk to, where the client
//! remembers the epochs it has seen, and the runtime.

mod history;
mod keys;
mod lookup;
mod registrar;
mod status;
mod update;
mod verify_proof;
mod watch;

pub use history::{history, HistoryArgs};
pub use keys::{key_migrate, keygen, KeyCommand, KeyMigrateArgs, KeygenArgs};
pub use lookup::{lookup, LookupArgs};
pub use registrar::{registrar, AttestArgs, RegistrarCommand};
pub use status::{status, StatusArgs};
pub use update::{public_key_arg, recover, update, veto, UpdateArgs, VetoArgs};
pub use verify_proof::{verify_proof, VerifyProofArgs};
pub use watch::{watch, WatchArgs};

use keyraft_client::{Client, ClientOptions};
use keyraft_core::RealmFile;
use std::path::PathBuf;

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// Which realm and replicas to talk to, and what answers to accept.
#[derive(Debug, clap::Args)]
pub struct RealmArgs {
    /// The realm file.
    #[arg(long)]
    pub realm: PathBuf,
    /// Replica public addresses (host:port) to use instead of the realm file's.
    #[arg(long = "endpoint")]
    pub endpoints: Vec<String>,
    /// The minimum number of verifier ratifications an answer's epoch needs, from distinct
    /// registered verifiers (default: the realm file's `verifier_threshold`). A replica
    /// majority is always required.
    #[arg(long = "verifiers", value_name = "MIN_RATIFICATIONS")]
    pub verifier_threshold: Option<usize>,
    /// Reject heads older than this many milliseconds (default: the realm file's).
    #[arg(long)]
    pub ttl_ms: Option<u64>,
    /// Accept heads up to this many milliseconds ahead of this machine's clock (default: the
    /// realm file's).
    #[arg(long)]
    pub skew_ms: Option<u64>,
    /// Where to remember the newest epoch seen per realm, to reject rollbacks across runs
    /// (default: `$XDG_STATE_HOME/keyraft/epochs.json`, else `~/.local/state/keyraft/epochs.json`).
    #[arg(long, env = "KEYRAFT_STATE_FILE")]
    pub state: Option<PathBuf>,
    /// Remember epochs for this run only (overrides `--state` and `KEYRAFT_STATE_FILE`).
    #[arg(long)]
    pub no_state: bool,
}

pub(super) fn load_realm(path: &PathBuf) -> Result<RealmFile, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading the realm file {}: {e}", path.display()))?;
    Ok(RealmFile::from_json(&text)?)
}

pub(super) fn default_state_file() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".local/state"),
    };
    Some(base.join("keyraft/epochs.json"))
}

/// Where the client remembers the newest epoch seen: `--no-state` wins, then `--state` (or
/// `KEYRAFT_STATE_FILE`), then the default file.
pub(super) fn state_file(state: Option<&PathBuf>, no_state: bool) -> Option<PathBuf> {
    if no_state {
        return None;
    }
    let file = state.cloned().or_else(default_state_file);
    if file.is_none() {
        tracing::warn!("no HOME or XDG_STATE_HOME: epochs seen are remembered for this run only");
    }
    file
}

pub(super) fn client(args: &RealmArgs) -> Result<Client, Box<dyn std::error::Error>> {
    let options = ClientOptions {
        verifier_threshold: args.verifier_threshold,
        epoch_ttl_ms: args.ttl_ms,
        clock_skew_ms: args.skew_ms,
        state_file: state_file(args.state.as_ref(), args.no_state),
        ..ClientOptions::default()
    };
    Ok(Client::with_options(&load_realm(&args.realm)?, &args.endpoints, &options)?)
}

pub(super) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// `n` and `noun`, in the plural unless `n` is 1: "1 verifier", "2 verifiers".
pub(crate) fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

//! `keyraft admin`: operator calls on the peer service.

use keyraft_proto::peer::{AdminReply, ChangeVotersRequest, InitRequest, NodeSpec, StatusReply, StatusRequest};
use keyraft_proto::transport::Channels;
use keyraft_server::peer_client::{connect_lazy, peer_channels, PeerClient};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// Deadline of an admin call (adding a learner waits for it to catch up).
pub const ADMIN_TIMEOUT_MS: u64 = 120_000;

/// Options of `keyraft admin`.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// A node's peer address (host:port); needed by every action but the offline
    /// `realm propose`, `realm sign`, `realm check` and `realm realm-file`.
    #[arg(long)]
    pub peer: Option<String>,
    /// The admin token file (with `--peer`; `keyraft dev` writes keys/admin.token).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The operator's TLS directory: the realm's CA (ca.crt) and an operator certificate
    /// (admin.crt, admin.key; `keyraft tls admin` issues one, `keyraft dev` writes DIR/tls).
    /// Without it, calls go in plaintext, which only nodes with `[tls] plaintext = true` take.
    #[arg(long, env = "KEYRAFT_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub action: AdminAction,
}

/// Admin actions.
#[derive(Debug, clap::Subcommand)]
pub enum AdminAction {
    /// Leader, term, applied index, epochs and each node's lag, as this node sees them.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bootstraps the cluster (refused when already initialised).
    Init {
        /// Voters as ID=PEER_ADDR,PUBLIC_ADDR.
        #[arg(long = "voter", required = true)]
        voters: Vec<String>,
    },
    /// Adds a learner and waits until it has caught up.
    AddLearner {
        /// New node id (never reuse the id of a wiped node).
        #[arg(long)]
        id: u64,
        /// Its peer address.
        #[arg(long)]
        peer_addr: String,
        /// Its public address.
        #[arg(long)]
        public_addr: String,
    },
    /// Sets the voters (applied after the next epoch boundary).
    ChangeVoters {
        /// The voter ids.
        #[arg(long = "voter", required = true, value_delimiter = ',')]
        voters: Vec<u64>,
    },
    /// Streams a consistent snapshot of this node's state into a backup file (checksummed,
    /// with its epoch and log position), for `keyraft restore`.
    Backup {
        /// The backup file to write (replaced atomically: whole or absent).
        #[arg(long)]
        out: PathBuf,
    },
    /// Realm configuration changes: propose, sign, check, submit (docs/protocol.md 2.8).
    Realm {
        /// What to do.
        #[command(subcommand)]
        action: crate::admin_realm::RealmAction,
    },
}

fn parse_voter(s: &str) -> Result<NodeSpec, String> {
    let (id, addrs) = s.split_once('=').ok_or_else(|| format!("--voter {s:?}: expected ID=PEER_ADDR,PUBLIC_ADDR"))?;
    let (peer, public) =
        addrs.split_once(',').ok_or_else(|| format!("--voter {s:?}: expected ID=PEER_ADDR,PUBLIC_ADDR"))?;
    let id = id.parse().map_err(|_| format!("--voter {s:?}: the id must be a number"))?;
    Ok(NodeSpec { id, peer_addr: peer.to_owned(), public_addr: public.to_owned() })
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(Duration::from_millis(ADMIN_TIMEOUT_MS));
    r
}

/// Makes an admin call, following the `leader-peer-addr` hint of an UNAVAILABLE answer once.
async fn on_leader<F, Fut>(
    client: PeerClient,
    channels: &Channels,
    token: &str,
    call: F,
) -> Result<AdminReply, tonic::Status>
where
    F: Fn(PeerClient) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<AdminReply>, tonic::Status>>,
{
    match call(client).await {
        Err(status) if status.code() == tonic::Code::Unavailable => {
            let leader = status
                .metadata()
                .get("leader-peer-addr")
                .and_then(|v| v.to_str().ok())
                .and_then(|addr| connect_lazy(channels, addr, token).ok());
            match leader {
                Some(leader) => call(leader).await.map(tonic::Response::into_inner),
                None => Err(status),
            }
        }
        other => other.map(tonic::Response::into_inner),
    }
}

/// The channels an operator calls the peer services over: TLS with the operator certificate
/// of `tls_dir`, or plaintext without one.
pub fn admin_channels(tls_dir: Option<&std::path::Path>) -> Result<Channels, keyraft_proto::tls::TlsError> {
    let tls = tls_dir.map(keyraft_proto::tls::operator_client).transpose()?;
    Ok(peer_channels(tls))
}

/// Prints a status reply.
pub fn print_status(s: &StatusReply, out: &mut dyn Write) -> std::io::Result<()> {
    let leader = if s.has_leader { s.leader_id.to_string() } else { "none".into() };
    writeln!(out, "node {} ({}), leader {leader}, term {}", s.node_id, s.role, s.term)?;
    writeln!(
        out,
        "  last log index {}, applied {}, snapshot {}, purged {}",
        s.last_log_index, s.applied_index, s.snapshot_index, s.purged_index
    )?;
    writeln!(
        out,
        "  last epoch {}, ratified {}, pending updates {}",
        s.last_epoch, s.ratified_epoch, s.pending_updates
    )?;
    for v in &s.verifiers {
        let latest = if v.latest_ratified_epoch == 0 {
            "none recently".to_owned()
        } else {
            format!("epoch {}", v.latest_ratified_epoch)
        };
        writeln!(out, "  verifier {}: latest ratification {latest}", hex::encode(&v.key))?;
    }
    for n in &s.nodes {
        let lag =
            if s.role == "leader" { format!(", matched {}, lag {}", n.matched_index, n.lag) } else { String::new() };
        writeln!(
            out,
            "  node {} {} peer={} public={}{lag}",
            n.id,
            if n.voter { "voter  " } else { "learner" },
            n.peer_addr,
            n.public_addr
        )?;
    }
    Ok(())
}

/// Status as JSON (schema `keyraft.admin-status`, docs/cli-json.md).
pub fn status_json(s: &StatusReply) -> serde_json::Value {
    crate::json::admin_status(s)
}

/// Deadline of a backup call: the snapshot is built, then streamed.
pub const BACKUP_TIMEOUT_MS: u64 = 3_600_000;

/// `keyraft admin backup`: the node's snapshot into `file`.
async fn backup(client: &mut PeerClient, file: &std::path::Path, out: &mut dyn Write) -> CmdResult {
    let started = std::time::Instant::now();
    let mut call = tonic::Request::new(keyraft_proto::peer::BackupRequest {});
    call.set_timeout(Duration::from_millis(BACKUP_TIMEOUT_MS));
    let stream = client.backup(call).await.map_err(keyraft_server::backup::BackupError::Call)?.into_inner();
    let h = keyraft_server::backup::receive(stream, file).await?;
    writeln!(
        out,
        "backup of realm {:?} from node {}: epoch {}, Raft log index {} (term {}), snapshot of {} bytes (SHA-256 {}), written to {} in {:.1} s",
        h.realm,
        h.node_id,
        h.epoch,
        h.last_log_index,
        h.last_log_term,
        h.snapshot_bytes,
        h.snapshot_sha256,
        file.display(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}

/// `keyraft admin`.
pub fn run(args: &AdminArgs, out: &mut dyn Write) -> CmdResult {
    if let AdminAction::Realm { action } = &args.action {
        if let Some(result) = crate::admin_realm::run_offline(action, out) {
            return result;
        }
    }
    let (Some(peer), Some(token_file)) = (&args.peer, &args.token_file) else {
        return Err("this admin action calls the cluster: give --peer and --token-file".into());
    };
    keyraft_core::key_file::check_owner_only(token_file, "--token-file")?;
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(token_file)
            .map_err(|e| format!("reading the token file {}: {e}", token_file.display()))?,
    );
    let token = keyraft_core::key_file::Secret::new(text.trim().to_owned());
    let plaintext = args.tls_dir.is_none();
    let failed = |action: &str, status: &tonic::Status| {
        let e = crate::cli::call_failed(&format!("admin {action} on {peer}"), status);
        // A plaintext call to a TLS listener ends in a closed stream, which says nothing.
        if plaintext && matches!(status.code(), tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Internal)
        {
            return format!("{e} (no --tls-dir given: if the nodes serve TLS, give the operator's TLS directory)");
        }
        e
    };
    let channels = admin_channels(args.tls_dir.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut client = connect_lazy(&channels, peer, &token)?;
        match &args.action {
            AdminAction::Status { json } => {
                let s = client.status(request(StatusRequest {})).await.map_err(|e| failed("status", &e))?.into_inner();
                if *json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&status_json(&s))?)?;
                } else {
                    print_status(&s, out)?;
                }
            }
            AdminAction::Init { voters } => {
                let voters = voters.iter().map(|v| parse_voter(v)).collect::<Result<Vec<_>, _>>()?;
                let r =
                    client.init(request(InitRequest { voters })).await.map_err(|e| failed("init", &e))?.into_inner();
                writeln!(out, "{}", r.message)?;
            }
            AdminAction::AddLearner { id, peer_addr, public_addr } => {
                let spec = NodeSpec { id: *id, peer_addr: peer_addr.clone(), public_addr: public_addr.clone() };
                let r = on_leader(client, &channels, &token, |mut c| {
                    let spec = spec.clone();
                    async move { c.add_learner(request(spec)).await }
                })
                .await
                .map_err(|e| failed("add-learner", &e))?;
                writeln!(out, "{}", r.message)?;
            }
            AdminAction::ChangeVoters { voters } => {
                let req = ChangeVotersRequest { voters: voters.clone() };
                let r = on_leader(client, &channels, &token, |mut c| {
                    let req = req.clone();
                    async move { c.change_voters(request(req)).await }
                })
                .await
                .map_err(|e| failed("change-voters", &e))?;
                writeln!(out, "{}", r.message)?;
            }
            AdminAction::Realm { action: crate::admin_realm::RealmAction::Submit { change } } => {
                let change = crate::admin_realm::read_change(change)?;
                let payload =
                    keyraft_proto::convert::encode_log_entry(&keyraft_core::Command::ConfigChange(Box::new(change)));
                // Forward proposes on the leader only: ask this node who leads.
                let status =
                    client.status(request(StatusRequest {})).await.map_err(|e| failed("status", &e))?.into_inner();
                let leader = status
                    .nodes
                    .iter()
                    .find(|n| status.has_leader && n.id == status.leader_id)
                    .map(|n| n.peer_addr.clone())
                    .ok_or("the cluster has no leader right now; retry")?;
                let mut leader = connect_lazy(&channels, &leader, &token)?;
                let reply = leader
                    .forward(request(keyraft_proto::peer::ForwardRequest { payload }))
                    .await
                    .map_err(|e| failed("realm submit", &e))?
                    .into_inner();
                let applied: keyraft_server::raft::types::ApplyResponse = postcard::from_bytes(&reply.payload)
                    .map_err(|e| format!("the leader's answer does not decode: {e}"))?;
                match applied {
                    keyraft_server::raft::types::ApplyResponse::Applied(
                        keyraft_state::Outcome::ConfigChangeStaged { generation, epoch },
                    ) => writeln!(out, "accepted: the head of epoch {epoch} commits to generation {generation}")?,
                    keyraft_server::raft::types::ApplyResponse::Applied(keyraft_state::Outcome::Ignored(why)) => {
                        writeln!(out, "already applied: {why}")?
                    }
                    keyraft_server::raft::types::ApplyResponse::Applied(keyraft_state::Outcome::Rejected(why)) => {
                        return Err(format!("the realm refused the change: {why}").into())
                    }
                    other => return Err(format!("unexpected answer: {other:?}").into()),
                }
            }
            AdminAction::Backup { out: file } => backup(&mut client, file, out).await?,
            AdminAction::Realm { .. } => return Err("this realm action runs offline (without --peer)".into()),
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

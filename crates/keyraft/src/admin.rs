//! `keyraft admin`: operator calls on the peer service.

use keyraft_proto::peer::{AdminReply, ChangeVotersRequest, InitRequest, NodeSpec, StatusReply, StatusRequest};
use keyraft_server::peer_client::{connect_lazy, PeerClient};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// Deadline of an admin call (adding a learner waits for it to catch up).
pub const ADMIN_TIMEOUT_MS: u64 = 120_000;

/// Options of `keyraft admin`.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// A node's peer address (host:port).
    #[arg(long)]
    pub peer: String,
    /// The cluster token file.
    #[arg(long)]
    pub token_file: PathBuf,
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
async fn on_leader<F, Fut>(client: PeerClient, token: &str, call: F) -> Result<AdminReply, tonic::Status>
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
                .and_then(|addr| connect_lazy(addr, token).ok());
            match leader {
                Some(leader) => call(leader).await.map(tonic::Response::into_inner),
                None => Err(status),
            }
        }
        other => other.map(tonic::Response::into_inner),
    }
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

/// `keyraft admin`.
pub fn run(args: &AdminArgs, out: &mut dyn Write) -> CmdResult {
    let token = std::fs::read_to_string(&args.token_file)
        .map_err(|e| format!("reading the token file {}: {e}", args.token_file.display()))?
        .trim()
        .to_owned();
    let failed = |action: &str, status: &tonic::Status| {
        crate::cli::call_failed(&format!("admin {action} on {}", args.peer), status)
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut client = connect_lazy(&args.peer, &token)?;
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
                let r = on_leader(client, &token, |mut c| {
                    let spec = spec.clone();
                    async move { c.add_learner(request(spec)).await }
                })
                .await
                .map_err(|e| failed("add-learner", &e))?;
                writeln!(out, "{}", r.message)?;
            }
            AdminAction::ChangeVoters { voters } => {
                let req = ChangeVotersRequest { voters: voters.clone() };
                let r = on_leader(client, &token, |mut c| {
                    let req = req.clone();
                    async move { c.change_voters(request(req)).await }
                })
                .await
                .map_err(|e| failed("change-voters", &e))?;
                writeln!(out, "{}", r.message)?;
            }
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

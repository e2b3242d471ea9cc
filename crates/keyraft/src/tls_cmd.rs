//! `keyraft tls`: a realm's CA and its node and operator certificates (`crate::certs`).

use crate::certs::{RealmCa, Validity, CA_VALID_DAYS, CERT_VALID_DAYS};
use std::io::Write;
use std::path::PathBuf;

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// `keyraft tls` actions.
#[derive(Debug, clap::Subcommand)]
pub enum TlsCommand {
    /// Makes the realm's CA: DIR/ca.crt (give it to every node as `ca_file` and to clients in
    /// the realm file's `tls.ca_pem`) and DIR/ca.key (keep it offline; owner-only).
    Ca {
        /// The directory to write to.
        #[arg(long)]
        dir: PathBuf,
        /// The realm's name (as in the realm file).
        #[arg(long)]
        realm_name: String,
        /// Validity, in days.
        #[arg(long, default_value_t = CA_VALID_DAYS)]
        days: i64,
    },
    /// Issues node ID's certificate, valid for node-ID.<realm> and each --host, as
    /// DIR/node-ID.crt and DIR/node-ID.key (the node's `[tls]` cert_file and key_file).
    Node {
        /// The CA's directory (ca.key); the certificate is written there too.
        #[arg(long)]
        dir: PathBuf,
        /// The realm's name.
        #[arg(long)]
        realm_name: String,
        /// The node id.
        #[arg(long)]
        id: u64,
        /// A host name or IP address clients and operators reach the node by; repeat.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Validity, in days.
        #[arg(long, default_value_t = CERT_VALID_DAYS)]
        days: i64,
    },
    /// Issues an operator certificate, admin.<realm> (or WHO.admin.<realm>, to tell operators
    /// apart in the replicas' logs), as DIR/admin.crt and DIR/admin.key (or DIR/WHO.admin.*):
    /// with ca.crt, what `keyraft admin --tls-dir` reads (as ca.crt, admin.crt, admin.key).
    Admin {
        /// The CA's directory (ca.key); the certificate is written there too.
        #[arg(long)]
        dir: PathBuf,
        /// The realm's name.
        #[arg(long)]
        realm_name: String,
        /// The operator's name.
        #[arg(long)]
        who: Option<String>,
        /// Validity, in days.
        #[arg(long, default_value_t = CERT_VALID_DAYS)]
        days: i64,
    },
}

/// Runs a `keyraft tls` action.
pub fn run(command: &TlsCommand, out: &mut dyn Write) -> CmdResult {
    match command {
        TlsCommand::Ca { dir, realm_name, days } => {
            if dir.join(crate::certs::CA_KEY_FILE).exists() {
                return Err(
                    format!("{} exists: a realm keeps its CA", dir.join(crate::certs::CA_KEY_FILE).display()).into()
                );
            }
            RealmCa::create(dir, realm_name, Validity::days(*days))?;
            writeln!(out, "wrote {}/ca.crt and {}/ca.key (keep the key offline)", dir.display(), dir.display())?;
        }
        TlsCommand::Node { dir, realm_name, id, hosts, days } => {
            let (cert, key) = RealmCa::open(dir, realm_name)?.issue_node(dir, *id, hosts, Validity::days(*days))?;
            writeln!(out, "wrote {} and {} (node-{id}.{realm_name})", cert.display(), key.display())?;
        }
        TlsCommand::Admin { dir, realm_name, who, days } => {
            let (cert, key) =
                RealmCa::open(dir, realm_name)?.issue_admin(dir, who.as_deref(), Validity::days(*days))?;
            let name = keyraft_proto::tls::admin_name(who.as_deref(), realm_name);
            writeln!(out, "wrote {} and {} ({name})", cert.display(), key.display())?;
        }
    }
    Ok(())
}

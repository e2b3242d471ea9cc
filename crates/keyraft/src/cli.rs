//! Command-line parsing and dispatch.

use clap::{Parser, Subcommand};

/// keyraft: an end-to-end-verifiable keyserver.
#[derive(Debug, Parser)]
#[command(name = "keyraft", version, about)]
pub struct Cli {
    /// How log lines are written on stderr: `text`, or `json` (one JSON object per line; a
    /// request's lines carry its `span` with `request_id` and `path`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KEYRAFT_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Starts a complete local realm: three replicas as three processes, keys and data under
    /// one directory, a realm file for clients.
    Dev(crate::dev::DevArgs),
    /// Writes a realm's configuration for replicas on other hosts (containers, machines):
    /// each replica's and verifier's directory, the realm file, the CA, the operator's
    /// credentials (docs/operations.md, "Containers and compose").
    ClusterConfig(crate::cluster_cmd::ClusterConfigArgs),
    /// Runs one replica.
    Server(crate::server_cmd::ServerArgs),
    /// Runs a third-party verifier: recomputes every epoch, ratifies it or files evidence.
    Verifier(crate::verifier_cmd::VerifierArgs),
    /// Generates an Ed25519 key for an identity's owner.
    Keygen(crate::client_cmd::KeygenArgs),
    /// Key file tools.
    #[command(subcommand)]
    Key(crate::client_cmd::KeyCommand),
    /// Registers an identity (version 0). In a realm that asks for a proof of the right to
    /// the identity: `--prepare FILE`, get the proof, then `--prepared FILE` with it.
    Register(crate::client_cmd::UpdateArgs),
    /// Registrar tools: attest a prepared registration.
    #[command(subcommand)]
    Registrar(crate::client_cmd::RegistrarCommand),
    /// Changes an identity's profile keys (those --set / --unset name; the others are kept), and
    /// optionally its owner or update policy.
    Update(crate::client_cmd::UpdateArgs),
    /// Recovers an identity whose keys are lost, with the proof its registration needs
    /// (`--prepare FILE`, get the proof, then `--prepared FILE` with it). It takes effect after
    /// the realm's veto window unless the current owner updates or vetoes it first.
    Recover(crate::client_cmd::UpdateArgs),
    /// Cancels a pending recovery of an identity: an update under its current policy that
    /// keeps its profile and policy.
    Veto(crate::client_cmd::VetoArgs),
    /// Looks an identity up and verifies the answer.
    Lookup(crate::client_cmd::LookupArgs),
    /// Where an update is (pending, in an epoch, rejected), as a replica reports it.
    Status(crate::client_cmd::StatusArgs),
    /// Lists an identity's versions, newest first, each verified at its epoch.
    History(crate::client_cmd::HistoryArgs),
    /// Follows an identity: its current value, then every change and heartbeat, verified.
    Watch(crate::client_cmd::WatchArgs),
    /// Verifies a saved lookup proof offline: as the current answer (fresh, no rollback), or
    /// with --past / --at-ms as a historical statement.
    VerifyProof(crate::client_cmd::VerifyProofArgs),
    /// Operator calls: status, init, add a learner, change the voters.
    Admin(crate::admin::AdminArgs),
    /// Load generator: concurrent updates and lookups against a running realm.
    Bench(crate::bench::BenchArgs),
    /// The update load of `bench` as puts against an etcd cluster (scripts/compare-etcd.sh).
    BenchEtcd(crate::bench_etcd::BenchEtcdArgs),
    /// Runs a whole realm in this process (no network), printing each step of the protocol.
    Demo(crate::demo::DemoArgs),
    /// A realm's CA and its node and operator certificates (TLS and mutual TLS).
    #[command(subcommand)]
    Tls(crate::tls_cmd::TlsCommand),
    /// Whether a replica is ready to serve (or alive, with --live), from its metrics listener:
    /// exit status 0 if so (for container health checks).
    Health(crate::health_cmd::HealthArgs),
    /// Creates a new replica data directory from a backup file (`keyraft admin backup`), or
    /// checks the file with --check.
    Restore(crate::restore_cmd::RestoreArgs),
}

/// Exit code of `register --wait` / `update --wait` when the update was accepted in an epoch
/// that its quorum of verifiers did not ratify within the wait.
pub const EXIT_NOT_RATIFIED: u8 = 3;

/// Exit code of a client command that could not read or write the client's own state file
/// (the epochs it has seen): this machine's disk or file is at fault, neither the realm nor the
/// request. Fix or delete the file the message names.
pub const EXIT_LOCAL_STATE: u8 = 4;

/// Exit code of a client command whose answer proved the realm wrong (a proof that does not
/// verify, a history with a gap, a rollback): keep the evidence the message names and alert.
pub const EXIT_MISBEHAVED: u8 = 5;

/// The exit code of a command that failed with `e`: [`EXIT_LOCAL_STATE`] when the client's own
/// state file is at fault, [`EXIT_MISBEHAVED`] when the realm misbehaved, else 1 (the message
/// says whose fault it is).
pub fn exit_code(e: &(dyn std::error::Error + 'static)) -> u8 {
    let mut cause = Some(e);
    while let Some(c) = cause {
        match c.downcast_ref::<keyraft_client::ClientError>() {
            Some(
                keyraft_client::ClientError::LocalState { .. } | keyraft_client::ClientError::AppliedNotRecorded { .. },
            ) => return EXIT_LOCAL_STATE,
            Some(e) if e.is_misbehavior() => return EXIT_MISBEHAVED,
            _ => {}
        }
        cause = c.source();
    }
    1
}

/// Ends the process with this exit code; the command has already said why.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// A failed call in words, as every command reports one: "<what failed>: <code in words>:
/// <message>", or the network cause ("connection refused") when the call got no answer; never
/// tonic's `Debug` structures.
pub fn call_failed(what: &str, status: &tonic::Status) -> String {
    format!("{what}: {}", keyraft_client::status_in_words(status))
}

/// Sets up logging from `RUST_LOG` (default: warnings), in `format`.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = match format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init()
        }
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let out = &mut std::io::stdout();
    match cli.command {
        Command::Dev(args) => crate::dev::run(&args, out),
        Command::ClusterConfig(args) => crate::cluster_cmd::run(&args, out),
        Command::Server(args) => crate::server_cmd::run(&args),
        Command::Verifier(args) => crate::verifier_cmd::run(&args),
        Command::Keygen(args) => crate::client_cmd::keygen(&args, out),
        Command::Key(crate::client_cmd::KeyCommand::Migrate(args)) => crate::client_cmd::key_migrate(&args, out),
        Command::Register(args) => crate::client_cmd::update(&args, false, out),
        Command::Update(args) => crate::client_cmd::update(&args, true, out),
        Command::Recover(args) => crate::client_cmd::recover(&args, out),
        Command::Veto(args) => crate::client_cmd::veto(&args, out),
        Command::Registrar(command) => crate::client_cmd::registrar(&command, out),
        Command::Lookup(args) => crate::client_cmd::lookup(&args, out),
        Command::Status(args) => crate::client_cmd::status(&args, out),
        Command::History(args) => crate::client_cmd::history(&args, out),
        Command::Watch(args) => crate::client_cmd::watch(&args, out),
        Command::VerifyProof(args) => crate::client_cmd::verify_proof(&args, out),
        Command::Admin(args) => crate::admin::run(&args, out),
        Command::Bench(args) => crate::bench::run(&args, out),
        Command::BenchEtcd(args) => crate::bench_etcd::run(&args, out),
        Command::Demo(args) => crate::demo::run(&args, out),
        Command::Tls(command) => crate::tls_cmd::run(&command, out),
        Command::Health(args) => crate::health_cmd::run(&args, out),
        Command::Restore(args) => crate::restore_cmd::run(&args, out),
    }
}

#[cfg(test)]
mod exit_code_tests {
    use super::*;
    use keyraft_client::ClientError;

    #[test]
    fn the_local_state_exit_code_also_covers_an_applied_update_left_unrecorded() {
        let local = || ClientError::LocalState {
            path: "/tmp/state.json".into(),
            action: "writing it",
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(exit_code(&local()), EXIT_LOCAL_STATE);
        let unrecorded =
            ClientError::AppliedNotRecorded { update_id: vec![1; 32], epoch: 3, source: Box::new(local()) };
        assert_eq!(exit_code(&unrecorded), EXIT_LOCAL_STATE);
        // Misbehaviour has its own code; a realm that is merely unreachable does not.
        assert_eq!(exit_code(&ClientError::Contradicted("x".into())), EXIT_MISBEHAVED);
        assert_eq!(exit_code(&ClientError::Unavailable("x".into())), 1);
    }
}

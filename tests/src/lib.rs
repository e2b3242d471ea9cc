//! A harness for end-to-end tests: a realm of real `keyraft server` processes on loopback,
//! created with `keyraft dev` (ports chosen by the OS), then started, killed (SIGKILL),
//! stopped (SIGTERM) and restarted by the tests.
//!
//! Tests wait for conditions by polling with generous deadlines, never by fixed sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod blackhole;
pub mod chaos;
pub mod disk;
pub mod fake;
pub mod linearizability;
pub mod sim;

use keyraft_client::{Client, ClientOptions};
use keyraft_core::RealmFile;
use keyraft_proto::peer::{StatusReply, StatusRequest};
use keyraft_proto::tls::TlsClient;
use keyraft_proto::transport::Channels;
use keyraft_server::config::NodeConfig;
use keyraft_server::peer_client::{connect_lazy, peer_channels, PeerClient};
use keyraft_server::Listening;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// A TLS client with the realm's CA `ca` and the certificate `cert` with its key `key`.
pub fn tls_client(ca: &Path, cert: &Path, key: &Path) -> TlsClient {
    use keyraft_proto::tls::{client_config, read_certificates, read_private_key, roots};
    let ca = read_certificates(ca, "ca").expect("CA certificate");
    let identity = (read_certificates(cert, "cert").expect("certificate"), read_private_key(key, "key").expect("key"));
    TlsClient::new(client_config(roots(&ca, "ca").expect("CA"), Some(identity)).expect("client config"))
}

/// Generous: machines have 2 cores and run three replicas plus the test.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// Cluster tests run one at a time: three replicas already load two cores.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `keyraft` binary: `KEYRAFT_BIN` if set, else the one `cargo test --workspace` (the
/// README's test command) builds next to this test, built here only if it is missing. When
/// running only this crate's tests after changing the code, build the binary first (or set
/// `KEYRAFT_TEST_REBUILD=1`).
pub fn keyraft_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("KEYRAFT_BIN") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/<test> -> target/<profile>/keyraft
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
        let bin = profile_dir.join("keyraft");
        if bin.exists() && std::env::var_os("KEYRAFT_TEST_REBUILD").is_none() {
            return bin;
        }
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "keyraft", "--bin", "keyraft"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo build keyraft");
        assert!(status.success(), "building the keyraft binary failed");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// Polls `f` until it returns `Some`, failing the test with `what` after `DEADLINE`.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One replica process.
#[derive(Debug)]
pub struct Replica {
    pub id: u64,
    pub config: PathBuf,
    pub child: Option<Child>,
    pub listening: Option<Listening>,
}

/// A realm of replica processes under a temporary directory.
#[derive(Debug)]
pub struct Realm {
    pub dir: tempfile::TempDir,
    pub replicas: Vec<Replica>,
    pub token: String,
    pub runtime: tokio::runtime::Runtime,
    /// Running verifiers by number (`verifier-N.toml`).
    pub verifiers: std::collections::BTreeMap<usize, Child>,
}

impl Realm {
    /// Creates a three-replica realm with `keyraft dev` (short epochs), applies `tweak` to
    /// each node's configuration, and starts the replicas.
    pub fn start(tweak: impl Fn(&mut toml::Table)) -> Realm {
        Self::start_with(&[], tweak)
    }

    /// [`Realm::start`] with `dev_args` added to the `keyraft dev` command line (options that
    /// shape the generated configurations, e.g. `--stream-stall-ms`).
    pub fn start_with(dev_args: &[&str], tweak: impl Fn(&mut toml::Table)) -> Realm {
        let mut realm = Self::create_with(dev_args, tweak);
        for i in 0..3 {
            realm.start_replica(i);
        }
        realm.wait_leader();
        realm
    }

    /// [`Realm::start_with`] without starting the replicas (`keyraft dev` has initialised the
    /// cluster; [`Realm::start_replica`] starts one).
    pub fn create_with(dev_args: &[&str], tweak: impl Fn(&mut toml::Table)) -> Realm {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(keyraft_bin())
            .args(["dev", "--base-port", "0", "--exit-when-ready", "--min-epoch-interval-ms", "100"])
            .args(["--max-epoch-interval-ms", "1000"])
            .args(dev_args)
            .arg("--dir")
            .arg(dir.path())
            .output()
            .expect("run keyraft dev");
        assert!(
            out.status.success(),
            "keyraft dev failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let token = std::fs::read_to_string(dir.path().join("keys/admin.token")).expect("token").trim().to_owned();
        let mut replicas = Vec::new();
        for id in 1..=3 {
            let config = dir.path().join(format!("node-{id}.toml"));
            edit_config(&config, &tweak);
            replicas.push(Replica { id, config, child: None, listening: None });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        Realm { dir, replicas, token, runtime, verifiers: Default::default() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn realm_file(&self) -> RealmFile {
        RealmFile::from_json(&std::fs::read_to_string(self.path().join("realm.json")).expect("realm.json"))
            .expect("realm file")
    }

    /// Runs the `keyraft` CLI in the realm's directory with its own client state file (and,
    /// for `keyraft admin`, the operator's TLS directory).
    pub fn run_cli(&self, args: &[&str]) -> std::process::Output {
        self.command().args(args).output().expect("run keyraft")
    }

    /// The `keyraft` CLI as [`Realm::run_cli`] runs it, to add to.
    pub fn command(&self) -> Command {
        let mut command = Command::new(keyraft_bin());
        command.env("KEYRAFT_STATE_FILE", self.path().join("client-state.json")).current_dir(self.path());
        if let Some(tls) = self.tls_dir() {
            command.env("KEYRAFT_TLS_DIR", tls);
        }
        command
    }

    /// The realm's TLS directory (`keyraft dev` made a CA and certificates), unless it was
    /// made with `--plaintext`.
    pub fn tls_dir(&self) -> Option<PathBuf> {
        let dir = self.path().join("tls");
        dir.join("ca.crt").exists().then_some(dir)
    }

    /// Channels to the public listeners as a client reads the realm file (TLS trusting its CA,
    /// or plaintext).
    pub fn channels(&self) -> Channels {
        let tls = keyraft_proto::tls::TlsClient::for_realm(&self.realm_file()).expect("the realm file's TLS");
        Channels::default().with_tls(tls)
    }

    /// A lazily connected channel to replica `i`'s public listener (see [`Realm::channels`]).
    pub fn public_channel(&self, i: usize) -> tonic::transport::Channel {
        let _g = self.runtime.enter();
        self.channels().lazy(&self.public_addr(i)).expect("public address")
    }

    /// [`Realm::public_channel`] with HTTP/2 windows of 64 KiB: the server sends only that
    /// far ahead of what the test reads (hyper's client default is 2 MiB per stream).
    pub fn small_window_channel(&self, i: usize) -> tonic::transport::Channel {
        let _g = self.runtime.enter();
        let channels = self.channels();
        let addr = self.public_addr(i);
        let endpoint = channels
            .endpoint(&addr)
            .expect("public address")
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535);
        channels.lazy_over(endpoint, &addr, None).expect("public address")
    }

    /// Channels to the peer services as an operator (the operator certificate over TLS).
    pub fn admin_channels(&self) -> Channels {
        peer_channels(self.tls_dir().map(|d| keyraft_proto::tls::operator_client(&d).expect("operator TLS files")))
    }

    /// Channels to the peer services as node `id` (its certificate over TLS).
    pub fn node_channels(&self, id: u64) -> Channels {
        peer_channels(self.tls_dir().map(|d| {
            tls_client(&d.join("ca.crt"), &d.join(format!("node-{id}.crt")), &d.join(format!("node-{id}.key")))
        }))
    }

    /// Runs a CLI command against this realm: `--realm realm.json` goes after the command
    /// (after `registrar attest`'s subcommand), except for `keygen`, `admin` and `restore`,
    /// which take none.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let at = match args[0] {
            "keygen" | "admin" | "restore" => return self.run_cli(args),
            "registrar" => 2,
            _ => 1,
        };
        let mut v = args[..at].to_vec();
        v.extend_from_slice(&["--realm", "realm.json"]);
        v.extend_from_slice(&args[at..]);
        self.run_cli(&v)
    }

    /// [`Realm::cli`], which must succeed: its standard output.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "keyraft {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// [`Realm::cli`], which must fail: its standard error.
    pub fn cli_fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(!out.status.success(), "keyraft {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8(out.stderr).expect("UTF-8 output")
    }

    /// The realm's name (`keyraft dev` makes a unique one per realm).
    pub fn name(&self) -> String {
        self.realm_file().realm
    }

    /// Starts node 4, not yet a member: a key of its own (`keys/replica-4.key`, which no
    /// configuration binds yet) and, over TLS, a certificate of its own from the realm's CA,
    /// replica 3's settings otherwise, fresh data, ports chosen by the OS. Returns its
    /// replica number (3).
    pub fn start_node_4(&mut self) -> usize {
        self.start_node_4_with(|_| {})
    }

    /// [`Realm::start_node_4`], with `tweak` applied to its configuration.
    pub fn start_node_4_with(&mut self, tweak: impl Fn(&mut toml::Table)) -> usize {
        let config4 = self.path().join("node-4.toml");
        std::fs::copy(&self.replicas[2].config, &config4).unwrap();
        let seed: [u8; 32] = rand::random();
        keyraft_core::key_file::write_secret(&self.path().join("keys/replica-4.key"), &seed).expect("node 4's key");
        if let Some(tls) = self.tls_dir() {
            let ca = keyraft::certs::RealmCa::open(&tls, &self.name()).expect("the realm's CA");
            let hosts = ["localhost".to_owned(), "127.0.0.1".to_owned()];
            ca.issue_node(&tls, 4, &hosts, keyraft::certs::Validity::days(1)).expect("node 4's certificate");
        }
        edit_config(&config4, &|t: &mut toml::Table| {
            if let Some(toml::Value::Table(tls)) = t.get_mut("tls") {
                if tls.contains_key("cert_file") {
                    tls.insert("cert_file".into(), "tls/node-4.crt".into());
                    tls.insert("key_file".into(), "tls/node-4.key".into());
                }
            }
            t.insert("node_id".into(), 4.into());
            t.insert("data_dir".into(), "data/node-4".into());
            t.insert("public_listen".into(), "127.0.0.1:0".into());
            t.insert("peer_listen".into(), "127.0.0.1:0".into());
            if t.contains_key("metrics_listen") {
                t.insert("metrics_listen".into(), "127.0.0.1:0".into());
            }
            t.insert("signing_key_file".into(), "keys/replica-4.key".into());
            tweak(t);
        });
        self.replicas.push(Replica { id: 4, config: config4, child: None, listening: None });
        self.start_replica(3);
        3
    }

    /// `req` signed with `keys/verifier-1.key` at this moment: replicas serve the verifier
    /// stream to the realm's registered verifiers only (docs/protocol.md section 7.1).
    pub fn signed_stream(
        &self,
        req: keyraft_proto::pb::VerifierStreamRequest,
    ) -> keyraft_proto::pb::VerifierStreamRequest {
        let secret = keyraft_core::key_file::read_secret(&self.path().join("keys/verifier-1.key"), "verifier key")
            .expect("verifier 1's key");
        let key = ed25519_dalek::SigningKey::from_bytes(&secret.key);
        let now_ms = keyraft_core::clock::system().now_ms();
        keyraft_proto::convert::sign_stream_request(req, &key, &self.name(), now_ms).expect("a valid key")
    }

    /// The public key in `keys/replica-<id>.key`, hex.
    pub fn replica_key_hex(&self, id: u64) -> String {
        let secret = keyraft_core::key_file::read_secret(&self.path().join(format!("keys/replica-{id}.key")), "key")
            .expect("replica key");
        hex::encode(ed25519_dalek::SigningKey::from_bytes(&secret.key).verifying_key().as_bytes())
    }

    /// Makes a realm configuration change as operators do, with the CLI: proposes `change`
    /// (the words after `keyraft admin realm propose ... --out F`) from the realm file
    /// `realm`, signs it with the keys of replicas `signers`, submits it through replica
    /// `via`, and waits until a head commits to it. Writes and returns the realm file of
    /// the new configuration (`realm-g<generation>.json`).
    pub fn change_config(&self, realm: &str, change: &[&str], signers: &[u64], via: usize) -> String {
        let run = |args: &[&str]| {
            let out = self.run_cli(args);
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "keyraft {args:?}: {text}");
            text
        };
        let file = format!("change-{}.hex", rand::random::<u32>());
        run(&[&["admin", "realm", "propose", "--realm", realm, "--out", &file], change].concat());
        for id in signers {
            run(&["admin", "realm", "sign", "--change", &file, "--key", &format!("keys/replica-{id}.key")]);
        }
        let peer = self.peer_addr(via);
        let submitted =
            run(&["admin", "--peer", &peer, "--token-file", "keys/admin.token", "realm", "submit", "--change", &file]);
        assert!(submitted.contains("accepted"), "{submitted}");
        let probe = format!("{file}.realm.json");
        run(&["admin", "realm", "realm-file", "--change", &file, "--realm", realm, "--out", &probe]);
        let next = RealmFile::from_json(&std::fs::read_to_string(self.path().join(&probe)).expect("new realm file"))
            .expect("new realm file");
        let generation = next.config().expect("new configuration").generation;
        let new_realm = format!("realm-g{generation}.json");
        std::fs::rename(self.path().join(&probe), self.path().join(&new_realm)).expect("rename realm file");
        wait_for("a head to commit to the configuration change", || {
            let out = self.run_cli(&["admin", "realm", "show", "--realm", "realm.json"]);
            String::from_utf8_lossy(&out.stdout).contains(&format!("generation {generation} ")).then_some(())
        });
        new_realm
    }

    /// Starts replica `i` (its process) and waits until it listens.
    pub fn start_replica(&mut self, i: usize) {
        self.start_replica_with_env(i, &[]);
    }

    /// [`Realm::start_replica`] with `env` set for the process (e.g. `KEYRAFT_LOG_FORMAT`).
    pub fn start_replica_with_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let r = &mut self.replicas[i];
        let data_dir = data_dir(&r.config);
        let _ = std::fs::remove_file(data_dir.join("listen.json"));
        std::fs::create_dir_all(self.dir.path().join("logs")).expect("logs dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("logs/node-{}.log", r.id)))
            .expect("log file");
        let child = Command::new(keyraft_bin())
            .envs(env.iter().copied())
            .arg("server")
            .arg("--config")
            .arg(&r.config)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn keyraft server");
        r.child = Some(child);
        let path = data_dir.join("listen.json");
        let listening = wait_for("a replica to listen", || {
            std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Listening>(&b).ok())
        });
        r.listening = Some(listening);
    }

    /// Starts the realm's first verifier (`verifier-1.toml`, written by `keyraft dev`).
    pub fn start_verifier(&mut self) {
        self.start_verifier_n(1);
    }

    /// Starts verifier `n` (`verifier-N.toml`; `keyraft dev --verifier-count` writes them).
    pub fn start_verifier_n(&mut self, n: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("logs/verifier-{n}.log")))
            .expect("log file");
        let child = Command::new(keyraft_bin())
            .arg("verifier")
            .arg("--config")
            .arg(self.dir.path().join(format!("verifier-{n}.toml")))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn keyraft verifier");
        self.verifiers.insert(n, child);
    }

    /// SIGKILLs the first verifier.
    pub fn kill_verifier(&mut self) {
        self.kill_verifier_n(1);
    }

    /// SIGKILLs verifier `n`.
    pub fn kill_verifier_n(&mut self, n: usize) {
        if let Some(mut c) = self.verifiers.remove(&n) {
            c.kill().expect("kill");
            c.wait().expect("wait");
        }
    }

    /// SIGTERMs verifier `n` and returns its exit status.
    pub fn terminate_verifier_n(&mut self, n: usize) -> std::process::ExitStatus {
        let mut c = self.verifiers.remove(&n).expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        wait_for("a verifier to exit after SIGTERM", || c.try_wait().expect("try_wait"))
    }

    /// SIGKILLs replica `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.replicas[i].child.take() {
            c.kill().expect("kill");
            c.wait().expect("wait");
        }
    }

    /// SIGTERMs replica `i` and returns its exit status.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        let mut c = self.replicas[i].child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        wait_for("a replica to exit after SIGTERM", || c.try_wait().expect("try_wait"))
    }

    pub fn public_addr(&self, i: usize) -> String {
        self.replicas[i].listening.as_ref().expect("listening").public_addr.to_string()
    }

    pub fn peer_addr(&self, i: usize) -> String {
        self.replicas[i].listening.as_ref().expect("listening").peer_addr.to_string()
    }

    /// A verifying client talking to replica `i` only, requiring the replica majority but no
    /// verifier (most tests run without verifiers; see [`Realm::client_requiring`]).
    pub fn client(&self, i: usize) -> Client {
        self.client_requiring(i, 0)
    }

    /// A verifying client talking to replica `i` only that requires `verifiers` ratifications.
    pub fn client_requiring(&self, i: usize, verifiers: usize) -> Client {
        let _g = self.runtime.enter();
        let options = ClientOptions { verifier_threshold: Some(verifiers), ..ClientOptions::default() };
        Client::with_options(&self.realm_file(), &[self.public_addr(i)], &options).expect("client")
    }

    /// Replica `i`'s peer service as an operator (the admin token).
    pub fn peer(&self, i: usize) -> PeerClient {
        let _g = self.runtime.enter();
        connect_lazy(&self.admin_channels(), &self.peer_addr(i), &self.token).expect("peer client")
    }

    /// Replica `i`'s peer service as node 1 would call it (the cluster token, and node 1's
    /// certificate over TLS).
    pub fn replica_peer(&self, i: usize) -> PeerClient {
        let token = std::fs::read_to_string(self.path().join("keys/cluster.token")).expect("cluster token");
        let _g = self.runtime.enter();
        connect_lazy(&self.node_channels(1), &self.peer_addr(i), token.trim()).expect("peer client")
    }

    /// Replica `i`'s status, if it answers.
    pub fn status(&self, i: usize) -> Option<StatusReply> {
        self.replicas[i].child.as_ref()?;
        let mut peer = self.peer(i);
        self.runtime.block_on(async {
            let mut r = tonic::Request::new(StatusRequest {});
            r.set_timeout(Duration::from_secs(5));
            peer.status(r).await.ok().map(tonic::Response::into_inner)
        })
    }

    /// The index (in `replicas`) of the leader, once every running replica agrees on it and
    /// it says it leads. (A restarted leader briefly believes it still leads its old term.)
    pub fn wait_leader(&self) -> usize {
        wait_for("a leader", || self.leader())
    }

    /// The index of the leader if every running replica agrees on it now (see
    /// [`Realm::wait_leader`]).
    pub fn leader(&self) -> Option<usize> {
        let mut leader_id = None;
        for (i, r) in self.replicas.iter().enumerate() {
            if r.child.is_none() {
                continue;
            }
            let s = self.status(i)?;
            if !s.has_leader || leader_id.is_some_and(|l| l != s.leader_id) {
                return None;
            }
            leader_id = Some(s.leader_id);
        }
        let i = self.replicas.iter().position(|r| Some(r.id) == leader_id && r.child.is_some())?;
        (self.status(i)?.role == "leader").then_some(i)
    }

    /// Waits until replica `i` has ratified epoch `epoch`.
    pub fn wait_ratified(&self, i: usize, epoch: u64) -> StatusReply {
        wait_for(&format!("replica {} to ratify epoch {epoch}", i + 1), || {
            self.status(i).filter(|s| s.ratified_epoch >= epoch)
        })
    }
}

impl Drop for Realm {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.verifiers) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for r in &mut self.replicas {
            if let Some(mut c) = r.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            // Keep the logs of a failed test: print where they are and leave the directory.
            let path = self.dir.path().to_owned();
            eprintln!("keeping {} for inspection", path.display());
            for r in &self.replicas {
                if let Ok(log) = std::fs::read_to_string(path.join(format!("logs/node-{}.log", r.id))) {
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    eprintln!("--- node {} log (last lines) ---", r.id);
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            let _ = dir.keep();
        }
    }
}

/// `GET /metrics` from replica `i`'s metrics listener: each sample line's name with labels,
/// and its value.
pub fn scrape_metrics(realm: &Realm, i: usize) -> std::collections::BTreeMap<String, f64> {
    scrape_metrics_at(realm, realm.replicas[i].listening.as_ref().unwrap().metrics_addr.unwrap())
}

/// `GET /metrics` from `addr` (a replica's or a verifier's metrics listener).
pub fn scrape_metrics_at(realm: &Realm, addr: std::net::SocketAddr) -> std::collections::BTreeMap<String, f64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let text = realm.runtime.block_on(async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        answer
    });
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    body.lines()
        .filter(|l| l.starts_with("keyraft_"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
        .collect()
}

/// Applies `tweak` to a node configuration file.
pub fn edit_config(path: &Path, tweak: &impl Fn(&mut toml::Table)) {
    let mut table: toml::Table = toml::from_str(&std::fs::read_to_string(path).expect("read config")).expect("toml");
    tweak(&mut table);
    std::fs::write(path, toml::to_string_pretty(&table).expect("toml")).expect("write config");
}

/// The data directory a node configuration names (resolved against its directory).
pub fn data_dir(config: &Path) -> PathBuf {
    let parsed: NodeConfig = toml::from_str(&std::fs::read_to_string(config).expect("read config")).expect("config");
    config.parent().expect("config dir").join(parsed.data_dir)
}

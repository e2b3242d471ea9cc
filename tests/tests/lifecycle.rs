//! A replica's life against its surroundings: a disk that fills (a real tmpfs), a read-only
//! data directory, a configuration out of range, and a forged command on the peer port.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ed25519_dalek::SigningKey;
use keyraft_client::ClientOptions;
use keyraft_core::{Command, EpochHead};
use keyraft_proto::convert::encode_log_entry;
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::GetEpochRequest;
use keyraft_proto::peer::{ForwardBatchRequest, ForwardOutcome, ForwardRequest};
use keyraft_server::raft::types::ApplyResponse;
use keyraft_tests::{data_dir, keyraft_bin, serial, wait_for, Realm};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn keys(v: &str) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([("pgp".to_owned(), v.as_bytes().to_vec())])
}

/// Epoch `epoch`'s head as replica `i` serves it, if it has one.
fn head(realm: &Realm, i: usize, epoch: u64) -> Option<EpochHead> {
    let _g = realm.runtime.enter();
    let mut c = KeyraftClient::new(realm.public_channel(i));
    let info = realm.runtime.block_on(c.get_epoch(GetEpochRequest { epoch })).ok()?.into_inner();
    Some(EpochHead::from_bytes(&info.head).unwrap())
}

fn log_of(realm: &Realm, id: u64) -> String {
    std::fs::read_to_string(realm.path().join(format!("logs/node-{id}.log"))).unwrap_or_default()
}

#[test]
fn a_forwarded_epoch_delimiter_is_refused_and_heads_keep_the_leaders_clock() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let leader = realm.wait_leader();
    let before = realm.wait_ratified(leader, 2);
    let ten_years_ms = 10 * 365 * 24 * 3_600_000;
    let forged = Command::EpochDelimiter { epoch: before.last_epoch + 1, timestamp_ms: now_ms() + ten_years_ms };
    // What a holder of the cluster token (a replica) could send.
    let mut peer = realm.replica_peer(leader);
    let rt = &realm.runtime;
    match rt.block_on(peer.forward(ForwardRequest { payload: encode_log_entry(&forged) })) {
        Ok(_) => {
            let applied =
                head(&realm, leader, before.last_epoch + 1).filter(|h| h.issue_time_ms > now_ms() + 86_400_000);
            panic!("the leader accepted a forwarded delimiter ten years ahead; applied as {applied:?}");
        }
        Err(e) => {
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
            assert!(e.message().contains("delimiter"), "{e}");
        }
    }
    let e = rt.block_on(peer.forward(ForwardRequest { payload: vec![0xff; 7] })).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

    // Epochs go on, stamped with the leader's clock.
    let after = realm.wait_ratified(leader, before.last_epoch + 3);
    for epoch in before.last_epoch + 1..=after.ratified_epoch {
        let h = head(&realm, leader, epoch).unwrap();
        assert!(h.issue_time_ms < now_ms() + 60_000, "epoch {epoch} issued at {} (now {})", h.issue_time_ms, now_ms());
    }
    // Forwarded updates still reach the leader.
    let follower = (leader + 1) % 3;
    let owner = SigningKey::generate(&mut rand::rngs::OsRng);
    rt.block_on(realm.client(follower).register("alice@example.com", &owner, keys("a"))).unwrap();
}

fn code(outcome: &ForwardOutcome) -> tonic::Code {
    tonic::Code::from_i32(outcome.code)
}

#[test]
fn a_forwarded_batch_answers_each_command_as_forward_would_alone_and_in_order() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let leader = realm.wait_leader();
    realm.wait_ratified(leader, 2);
    let rt = &realm.runtime;
    let delimiter = Command::EpochDelimiter { epoch: 1_000, timestamp_ms: now_ms() };
    // A ratification by a key that is no verifier of the realm: proposed, and refused by the step.
    let stranger = SigningKey::generate(&mut rand::rngs::OsRng);
    let head_1 = head(&realm, leader, 1).unwrap();
    let ratification = Command::VerifierSignature {
        epoch: 1,
        verifier: keyraft_core::keys::public_key_of(&stranger),
        signature: keyraft_core::Signature(
            ed25519_dalek::Signer::sign(&stranger, &keyraft_core::lookup::ratification_message(&head_1)).to_bytes(),
        ),
    };
    let payloads = vec![
        encode_log_entry(&ratification),
        encode_log_entry(&delimiter),
        vec![0xff; 7],
        encode_log_entry(&ratification),
    ];
    let mut peer = realm.replica_peer(leader);
    let outcomes = rt.block_on(peer.forward_batch(ForwardBatchRequest { payloads })).unwrap().into_inner().outcomes;
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    for k in [0, 3] {
        assert_eq!(code(&outcomes[k]), tonic::Code::Ok, "{outcomes:?}");
        assert!(outcomes[k].raft_log_index > 0, "{outcomes:?}");
        let response: ApplyResponse = postcard::from_bytes(&outcomes[k].payload).unwrap();
        assert!(matches!(response, ApplyResponse::Applied(_)), "{response:?}");
    }
    assert_eq!(code(&outcomes[1]), tonic::Code::PermissionDenied, "{outcomes:?}");
    assert!(outcomes[1].message.contains("delimiter"), "{outcomes:?}");
    assert!(outcomes[1].payload.is_empty() && outcomes[1].raft_log_index == 0, "{outcomes:?}");
    assert_eq!(code(&outcomes[2]), tonic::Code::InvalidArgument, "{outcomes:?}");

    // A follower does not lead: each command is answered UNAVAILABLE, for its forwarder to ask
    // whoever leads now.
    let follower = (leader + 1) % 3;
    let mut other = realm.replica_peer(follower);
    let outcomes = rt
        .block_on(other.forward_batch(ForwardBatchRequest { payloads: vec![encode_log_entry(&ratification)] }))
        .unwrap()
        .into_inner()
        .outcomes;
    assert_eq!(code(&outcomes[0]), tonic::Code::Unavailable, "{outcomes:?}");

    // Too many commands in one call, and the admin token, are refused whole.
    let payloads = vec![encode_log_entry(&ratification); 513];
    let e = rt.block_on(peer.forward_batch(ForwardBatchRequest { payloads })).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("at most 512"), "{e}");
    let mut admin = realm.peer(leader);
    let payloads = vec![encode_log_entry(&ratification)];
    let e = rt.block_on(admin.forward_batch(ForwardBatchRequest { payloads })).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");

    // Followers' clients, many at once, are answered through batches.
    let owners: Vec<SigningKey> = (0..24).map(|_| SigningKey::generate(&mut rand::rngs::OsRng)).collect();
    let registrations: Vec<_> = owners
        .into_iter()
        .enumerate()
        .map(|(k, owner)| {
            let client = realm.client((leader + 1 + k % 2) % 3);
            async move { client.register(&format!("user{k}@example.com"), &owner, keys("k")).await }
        })
        .collect();
    let answers: Vec<_> = rt.block_on(async {
        let tasks: Vec<_> = registrations.into_iter().map(tokio::spawn).collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        answers
    });
    for (k, a) in answers.iter().enumerate() {
        assert!(a.is_ok(), "registration {k}: {a:?}");
    }
}

/// Runs replica `i`'s `keyraft server`, which must exit within 30 s: its status and output.
fn server_exits(realm: &Realm, i: usize) -> (ExitStatus, String) {
    let out = realm.path().join(format!("logs/server-exits-{i}.log"));
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let file = std::fs::File::create(&out).unwrap();
    let mut child = Process::new(keyraft_bin())
        .arg("server")
        .arg("--config")
        .arg(&realm.replicas[i].config)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the server still runs after 30 s: {}", std::fs::read_to_string(&out).unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(&out).unwrap())
}

#[test]
fn a_configuration_value_out_of_range_stops_the_server_naming_the_key() {
    let _s = serial();
    let realm = Realm::create_with(&[], |t| {
        if t["node_id"].as_integer() == Some(1) {
            let raft = t.entry("raft").or_insert(toml::Value::Table(Default::default())).as_table_mut().unwrap();
            raft.insert("heartbeat_interval_ms".into(), 0.into());
        }
    });
    let (status, stderr) = server_exits(&realm, 0);
    assert!(!status.success(), "started with heartbeat_interval_ms = 0: {stderr}");
    assert!(stderr.contains("raft.heartbeat_interval_ms = 0: must be between 10 and 60000"), "{stderr}");
}

/// Makes `dir` read-only for this process: a read-only bind mount as root (root writes through
/// permissions), else its permission bits. Undone on drop.
struct ReadOnly {
    dir: PathBuf,
    mounted: bool,
}

impl ReadOnly {
    fn new(dir: &Path) -> ReadOnly {
        let run = |args: &[&str]| {
            Process::new("mount").args(args).arg(dir).arg(dir).output().is_ok_and(|o| o.status.success())
        };
        let mounted = run(&["--bind"]) && {
            let ro = Process::new("mount").args(["-o", "remount,bind,ro"]).arg(dir).output().unwrap();
            assert!(
                ro.status.success(),
                "remounting {} read-only: {}",
                dir.display(),
                String::from_utf8_lossy(&ro.stderr)
            );
            true
        };
        if !mounted {
            set_readonly(dir, true);
        }
        ReadOnly { dir: dir.to_owned(), mounted }
    }
}

fn set_readonly(dir: &Path, readonly: bool) {
    let mut p = std::fs::metadata(dir).unwrap().permissions();
    p.set_readonly(readonly);
    std::fs::set_permissions(dir, p).unwrap();
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Process::new("umount").arg("-l").arg(&self.dir).status();
        } else {
            set_readonly(&self.dir, false);
        }
    }
}

#[test]
fn a_read_only_data_directory_stops_the_server_naming_the_path() {
    let _s = serial();
    let realm = Realm::create_with(&[], |_| {});
    let dir = data_dir(&realm.replicas[0].config);
    let _ro = ReadOnly::new(&dir);
    let (status, stderr) = server_exits(&realm, 0);
    assert!(!status.success(), "started on a read-only data directory: {stderr}");
    assert!(stderr.contains(&dir.display().to_string()) && stderr.contains("not writable"), "{stderr}");
}

/// A tmpfs mounted over a directory (needs root), unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_bytes` over `dir`, keeping `dir`'s files; None if this process
    /// may not mount.
    fn over(dir: &Path, size_bytes: u64) -> Option<Tmpfs> {
        let saved = dir.with_extension("before-tmpfs");
        std::fs::rename(dir, &saved).unwrap();
        std::fs::create_dir(dir).unwrap();
        let mounted = Process::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .is_ok_and(|o| o.status.success());
        let copied =
            mounted && Process::new("cp").arg("-a").arg(saved.join(".")).arg(dir).status().is_ok_and(|s| s.success());
        if !copied {
            if mounted {
                let _ = Process::new("umount").arg(dir).status();
            }
            std::fs::remove_dir(dir).unwrap();
            std::fs::rename(&saved, dir).unwrap();
            return None;
        }
        Some(Tmpfs { dir: dir.to_owned() })
    }

    /// Fills the file system with `filler` until it has no space left.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5a_u8; 64 * 1024];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(28), "filling {}: {e}", self.dir.display());
                return path;
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Process::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[test]
fn a_leader_whose_disk_fills_exits_with_one_clear_error_and_recovers_once_space_returns() {
    let _s = serial();
    // Node 1 calls elections long before the others, so it leads whenever it can.
    let mut realm = Realm::create_with(&[], |t| {
        if t["node_id"].as_integer() == Some(1) {
            let raft = t.entry("raft").or_insert(toml::Value::Table(Default::default())).as_table_mut().unwrap();
            raft.insert("heartbeat_interval_ms".into(), 100.into());
            raft.insert("election_timeout_min_ms".into(), 300.into());
            raft.insert("election_timeout_max_ms".into(), 400.into());
        }
    });
    let dir = data_dir(&realm.replicas[0].config);
    let Some(disk) = Tmpfs::over(&dir, 64 << 20) else {
        eprintln!("skipped: mounting a tmpfs needs root (or CAP_SYS_ADMIN)");
        return;
    };
    for i in 0..3 {
        realm.start_replica(i);
    }
    let leader = realm.wait_leader();
    if leader != 0 {
        realm.kill(leader);
        wait_for("node 1 to lead", || (realm.wait_leader() == 0).then_some(()));
        realm.start_replica(leader);
    }
    let ratified = realm.wait_ratified(1, 1).ratified_epoch;

    // Updates through the other replicas, forwarded to node 1 while it leads.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let _g = realm.runtime.enter();
        let options = ClientOptions { verifier_threshold: Some(0), ..ClientOptions::default() };
        let endpoints = [realm.public_addr(1), realm.public_addr(2)];
        let client = keyraft_client::Client::with_options(&realm.realm_file(), &endpoints, &options).unwrap();
        let (stop, acked) = (stop.clone(), acked.clone());
        realm.runtime.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let owner = SigningKey::generate(&mut rand::rngs::OsRng);
                let user = format!("user-{n}@example.com");
                match client.register(&user, &owner, keys(&"k".repeat(2000))).await {
                    Ok(_) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
    };
    wait_for("updates before the disk fills", || (acked.load(Ordering::Relaxed) >= 5).then_some(()));
    let filler = disk.fill();

    let status = wait_for("node 1 to exit once its disk is full", || {
        realm.replicas[0].child.as_mut().unwrap().try_wait().unwrap()
    });
    realm.replicas[0].child = None;
    assert!(!status.success(), "node 1 exited with {status}");
    let log = log_of(&realm, 1);
    assert!(log.len() < 1 << 20, "node 1 logged {} bytes", log.len());
    let clear: Vec<&str> = log.lines().filter(|l| l.contains("the Raft core stopped")).collect();
    assert_eq!(clear.len(), 1, "one clear error expected: {clear:#?}");
    assert!(
        clear[0].contains(&dir.display().to_string()) && clear[0].contains("No space left on device"),
        "{}",
        clear[0]
    );
    let repeated = log.lines().filter(|l| l.contains("failure sending RaftMsg")).count();
    eprintln!("node 1 exited with {status}, {} log bytes, {repeated} lines of 'failure sending RaftMsg':", log.len());
    for l in log.lines().filter(|l| l.contains("ERROR") || l.starts_with("error")).take(20) {
        eprintln!("  {l}");
    }
    assert!(repeated < 100, "{repeated} lines of 'failure sending RaftMsg'");

    // The others go on without it.
    let before = acked.load(Ordering::Relaxed);
    wait_for("updates without node 1", || (acked.load(Ordering::Relaxed) >= before + 5).then_some(()));

    // Space returns: the restarted replica recovers from its log and signs again.
    std::fs::remove_file(filler).unwrap();
    realm.start_replica(0);
    let target = realm.status(realm.wait_leader()).unwrap().ratified_epoch.max(ratified) + 2;
    realm.wait_ratified(0, target);
    stop.store(true, Ordering::Relaxed);
    realm.runtime.block_on(writer).unwrap();
    assert_eq!(head(&realm, 0, target), head(&realm, 1, target), "node 1 recovered to a different head");
    drop(disk);
}

//! `keyraft dev` as a user runs it: a crash (kill -9) of its verifier or of a replica does
//! not stop the realm; the process is restarted, and only SIGTERM (ctrl-c) of `keyraft dev`
//! stops everything. Each dev realm has a name of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_tests::{keyraft_bin, serial, wait_for};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// The pids of running processes whose command line names `config`.
fn pids_running(config: &Path) -> Vec<i32> {
    let needle = config.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let zombie = std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|s| s.contains(") Z "));
        if !zombie && args.contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn a_killed_verifier_or_replica_is_restarted_and_only_sigterm_stops_the_realm() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().canonicalize().unwrap();
    let mut dev = Command::new(keyraft_bin())
        .args(["dev", "--base-port", "0", "--min-epoch-interval-ms", "100", "--max-epoch-interval-ms", "1000"])
        .arg("--dir")
        .arg(&dir_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let output = Arc::new(Mutex::new(String::new()));
    let reader = {
        let output = output.clone();
        let stdout = dev.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut o = output.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        })
    };
    let said = |what: &str| output.lock().unwrap().contains(what);
    wait_for("keyraft dev to be up", || said("ctrl-c stops the realm").then_some(()));
    // A realm of its own name: proofs from two dev realms are told apart.
    let name = keyraft_core::RealmFile::from_json(&std::fs::read_to_string(dir_path.join("realm.json")).unwrap())
        .unwrap()
        .realm;
    assert!(name.starts_with("dev-") && name.len() == 12, "{name}");
    assert!(said(&format!("realm \"{name}\" is up")), "{}", output.lock().unwrap());
    assert_ne!(keyraft_tests::Realm::create_with(&[], |_| {}).name(), name);
    let verifier_config = dir_path.join("verifier-1.toml");
    let node_config = dir_path.join("node-2.toml");
    let verifier = wait_for("the verifier process", || pids_running(&verifier_config).first().copied());
    let node = wait_for("replica 2's process", || pids_running(&node_config).first().copied());

    kill(Pid::from_raw(verifier), Signal::SIGKILL).unwrap();
    kill(Pid::from_raw(node), Signal::SIGKILL).unwrap();
    wait_for("a new verifier process", || {
        pids_running(&verifier_config).into_iter().find(|p| *p != verifier).map(|_| ())
    });
    wait_for("a new replica 2 process", || pids_running(&node_config).into_iter().find(|p| *p != node).map(|_| ()));
    assert!(dev.try_wait().unwrap().is_none(), "keyraft dev stopped: {}", output.lock().unwrap());
    assert!(said("verifier-1 exited") && said("node-2 exited"), "{}", output.lock().unwrap());

    kill(Pid::from_raw(i32::try_from(dev.id()).unwrap()), Signal::SIGTERM).unwrap();
    let status = wait_for("keyraft dev to stop", || dev.try_wait().unwrap());
    assert!(status.success(), "{status}: {}", output.lock().unwrap());
    reader.join().unwrap();
    for config in ["node-1.toml", "node-2.toml", "node-3.toml", "verifier-1.toml"] {
        assert!(pids_running(&dir_path.join(config)).is_empty(), "{config} still running after keyraft dev stopped");
    }
}

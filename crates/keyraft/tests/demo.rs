//! The README's first command works: `keyraft demo` runs the whole protocol and every lookup
//! it prints was verified.
#![allow(missing_docs)]

use std::process::Command;

#[test]
fn demo_runs_and_verifies_every_lookup() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_keyraft")).args(["demo", "--users", "50"]).output().expect("run keyraft demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "keyraft demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("VERIFIED").count(), 3, "{stdout}");
    assert!(stdout.contains("VERIFIED version 1 at epoch 2"), "{stdout}");
    assert!(stdout.contains("rejected"), "{stdout}");
}

#[test]
fn unknown_subcommands_fail_with_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_keyraft")).arg("frobnicate").output().expect("run keyraft");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}

/// `keyraft ... | head -1`: once the reader has gone, the command stops without an error
/// message (a closed pipe is how a reader says "enough", not a failure).
#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_keyraft"))
        .args(["demo", "--users", "5"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run keyraft demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("error") && !stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
}

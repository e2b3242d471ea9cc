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

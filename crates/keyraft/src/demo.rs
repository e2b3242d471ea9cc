//! `keyraft demo`: the whole protocol in one process.
//!
//! One state machine (as every replica runs it) is driven through an in-memory log: users
//! register and rotate keys, the epoch proposer's decision cuts epochs, every replica key
//! signs the heads, a verifier ratifies them, and a client verifies lookups with
//! `keyraft_core::verify_lookup` exactly as it would against a cluster.

use crate::client_cmd::count;
use ed25519_dalek::SigningKey;
use keyraft_core::{verify_lookup, Canonical, Command, Policy};
use keyraft_state::harness::{derive_signing_key, public_key, test_profile, Harness};
use keyraft_state::proposer::{decide_epoch, EpochDecision, EpochIntervals};
use keyraft_state::Outcome;
use std::io::Write;

/// Options of `keyraft demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of extra users to register, to make the tree non-trivial.
    #[arg(long, default_value_t = 1000)]
    pub users: u32,
    /// Seed for every key in the demo realm.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

type DemoResult = Result<(), Box<dyn std::error::Error>>;

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::UpdateAccepted { epoch, .. } => format!("accepted into epoch {epoch}"),
        Outcome::UpdateDuplicate { epoch, .. } => format!("already applied in epoch {epoch}"),
        Outcome::UpdateRejected { reason, .. } => format!("rejected ({reason})"),
        other => format!("{other:?}"),
    }
}

fn publish(h: &mut Harness, out: &mut dyn Write) -> DemoResult {
    let intervals = EpochIntervals { min_epoch_interval_ms: 500, max_epoch_interval_ms: 5_000 };
    h.now_ms += 1_000;
    match decide_epoch(&h.machine.epoch_state(), true, h.now_ms, intervals) {
        EpochDecision::Propose { epoch, timestamp_ms } => {
            h.append(Command::EpochDelimiter { epoch, timestamp_ms })?;
        }
        other => return Err(format!("epoch proposer did not propose: {other:?}").into()),
    }
    let epoch = h.machine.epoch_state().last_epoch;
    h.sign(epoch, h.replicas.len())?;
    for i in 0..h.verifiers.len() {
        h.ratify(epoch, i)?;
    }
    let head = h.machine.head(epoch)?.ok_or("head missing after the epoch was cut")?;
    writeln!(
        out,
        "epoch {epoch}: {}, root {}, signed by {}, ratified by {}",
        count(head.update_count, "update"),
        hex::encode(&head.root[..8]),
        count(h.machine.replica_signatures(epoch)?.len() as u64, "replica"),
        count(h.machine.verifier_signatures(epoch)?.len() as u64, "verifier")
    )?;
    Ok(())
}

fn show_lookup(h: &Harness, user: &str, out: &mut dyn Write) -> DemoResult {
    let proof = h.lookup_proof(user, None, 1)?;
    let size = proof.encode().len();
    let lookup = verify_lookup(&h.client_realm(1), user, &proof, h.now_ms, None)?;
    match &lookup.entry {
        Some((entry, profile)) => writeln!(
            out,
            "lookup {user}: VERIFIED version {} at epoch {} ({size}-byte proof), keys {:?}",
            entry.version,
            lookup.epoch(),
            profile.keys.iter().map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v))).collect::<Vec<_>>()
        )?,
        None => writeln!(out, "lookup {user}: VERIFIED absent at epoch {} ({size}-byte proof)", lookup.epoch())?,
    }
    Ok(())
}

/// Runs the demo, writing a narrative to `out`.
pub fn run(args: &DemoArgs, out: &mut dyn Write) -> DemoResult {
    let mut h = Harness::new("demo.keyraft.example", 3, 1, args.seed);
    writeln!(
        out,
        "realm demo.keyraft.example: 3 replicas, 1 verifier, config hash {}",
        hex::encode(&h.config().hash()[..8])
    )?;
    let alice = derive_signing_key(args.seed, "alice");
    let outcome = h.register("alice@example.org", &alice, &[("mail", b"alice-pgp-v1")])?;
    writeln!(out, "register alice@example.org: {}", describe(&outcome))?;
    for i in 0..args.users {
        let key = derive_signing_key(args.seed, &format!("user-{i}"));
        h.register(&format!("user-{i}@example.org"), &key, &[("mail", b"key")])?;
    }
    writeln!(out, "registered {} more users", args.users)?;
    publish(&mut h, out)?;
    show_lookup(&h, "alice@example.org", out)?;
    show_lookup(&h, "nobody@example.org", out)?;

    // Alice rotates to a key on her new phone: both the old and the new policy must consent.
    let phone: SigningKey = derive_signing_key(args.seed, "alice-phone");
    let update = h.make_update(
        "alice@example.org",
        1,
        Policy::single(public_key(&phone)),
        test_profile("alice-v2", &[("mail", b"alice-pgp-v2")]),
        &[&alice, &phone],
    );
    let outcome = h.append(Command::Update(Box::new(update)))?;
    writeln!(out, "update alice@example.org to version 1 (old and new key sign): {}", describe(&outcome))?;
    let theft = h.make_update(
        "alice@example.org",
        2,
        Policy::single(public_key(&alice)),
        test_profile("stolen", &[("mail", b"mallory")]),
        &[&alice],
    );
    if let Outcome::UpdateRejected { reason, .. } = h.append(Command::Update(Box::new(theft)))? {
        writeln!(out, "a second update in the same epoch with the old key: rejected ({reason})")?;
    }
    publish(&mut h, out)?;
    show_lookup(&h, "alice@example.org", out)?;
    writeln!(
        out,
        "every answer above was checked with keyraft_core::verify_lookup (VRF, quorum, tree, entry, profile)"
    )?;
    Ok(())
}

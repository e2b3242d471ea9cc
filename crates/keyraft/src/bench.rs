//! `keyraft bench`: a load generator against a running realm.
//!
//! Three phases, each with `--clients` concurrent tasks spread over the realm's endpoints:
//! 1. lookups of fresh user ids (which also tell the bench their indexes), then of the same
//!    ids again up to `--lookups`; one answer in `--verify-every` is verified in full;
//! 2. registrations of those ids (signed before the clock starts), each sent to the replica
//!    its lookup went to, as a client does (look up, then update): an update counts when the
//!    replica answers that it is applied, i.e. committed by a Raft majority;
//! 3. the time until the epoch holding the last update is keyserver-ratified.
//!
//! It prints throughput and p50/p99/p999 latency per phase.

use ed25519_dalek::SigningKey;
use keyraft_client::{now_ms, public_key, sign_entry};
use keyraft_core::lookup::{verify_lookup, ClientRealm, Lookup, LookupProof};
use keyraft_core::{decode_canonical, Canonical, Entry, Policy, Profile, RealmFile, SignedEntry, Update, Verified};
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::{GetEpochRequest, LookupRequest, UpdateRequest};
use keyraft_proto::transport::{ChannelOptions, Channels};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// Options of `keyraft bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The realm file.
    #[arg(long)]
    pub realm: PathBuf,
    /// Endpoints to use instead of the realm file's.
    #[arg(long = "endpoint")]
    pub endpoints: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Identities to register (each also looked up once first).
    #[arg(long, default_value_t = 10_000)]
    pub updates: usize,
    /// Lookups in all (at least one per identity).
    #[arg(long, default_value_t = 50_000)]
    pub lookups: usize,
    /// Verify one lookup answer in this many.
    #[arg(long, default_value_t = 100)]
    pub verify_every: usize,
    /// The minimum number of verifier ratifications an epoch needs for lookups to accept it
    /// (default: the realm file's `verifier_threshold`).
    #[arg(long = "verifiers", value_name = "MIN_RATIFICATIONS")]
    pub verifier_threshold: Option<usize>,
    /// Each update waits until its epoch has the verifier ratifications and returns the
    /// proof, which the bench verifies: the latencies are then Update to ratified proof.
    #[arg(long)]
    pub wait_for_quorum: bool,
    /// Lookups of the registered identities once their last epoch is ratified, cycling over
    /// all of them, each sent where its first lookup went (warm: present identities whose VRF
    /// result the replica holds); verified one in `--verify-every`, each verified answer
    /// checked to hold its entry.
    #[arg(long, default_value_t = 0)]
    pub reads: usize,
}

/// Latencies in microseconds.
fn percentiles(mut v: Vec<u64>) -> (u64, u64, u64) {
    if v.is_empty() {
        return (0, 0, 0);
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.5), at(0.99), at(0.999))
}

pub(crate) fn report(
    out: &mut dyn Write,
    what: &str,
    n: usize,
    errors: usize,
    elapsed: Duration,
    lat: Vec<u64>,
) -> std::io::Result<()> {
    let (p50, p99, p999) = percentiles(lat);
    writeln!(
        out,
        "{what}: {n} in {:.2} s = {:.0}/s ({errors} errors); latency p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        p50 as f64 / 1000.0,
        p99 as f64 / 1000.0,
        p999 as f64 / 1000.0
    )
}

/// Runs `total` jobs over `clients` tasks; returns per-job latencies and the error count.
pub(crate) async fn drive<F, Fut>(clients: usize, total: usize, job: F) -> (Vec<u64>, usize, Duration)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let job = Arc::new(job);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let next = next.clone();
        let job = job.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut first_error = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                match job(c, i).await {
                    Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (lat, errors, first_error)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e, first)) = t.await {
            lat.extend(l);
            errors += e;
            if let Some(first) = first {
                tracing::warn!(error = %first, "bench request failed");
            }
        }
    }
    (lat, errors, start.elapsed())
}

/// A lookup of `user` at the present epoch: the proof's bytes, unverified.
async fn lookup(client: &mut KeyraftClient<Channel>, user: &str, threshold: u32) -> Result<Vec<u8>, String> {
    let request =
        LookupRequest { user_id: user.to_owned(), wait_ms: 5_000, verifier_threshold: threshold, ..Default::default() };
    let r = client.lookup(request).await.map_err(|s| crate::cli::call_failed("lookup", &s))?;
    Ok(r.into_inner().proof)
}

/// The lookup proof `bytes` for `user`, verified in full as a client verifies it.
fn verified(realm: &ClientRealm, user: &str, bytes: &[u8]) -> Result<Verified<Lookup>, String> {
    let proof: LookupProof = decode_canonical(bytes).map_err(|e| format!("lookup proof for {user}: {e}"))?;
    verify_lookup(realm, user, &proof, now_ms(), None).map_err(|e| format!("lookup proof for {user}: {e}"))
}

/// `keyraft bench`.
#[allow(clippy::too_many_lines)] // the three phases, in order, read best together
pub fn run(args: &BenchArgs, out: &mut dyn Write) -> CmdResult {
    let file = RealmFile::from_json(&std::fs::read_to_string(&args.realm)?)?;
    let mut realm = file.client_realm()?;
    keyraft_client::ClientOptions { verifier_threshold: args.verifier_threshold, ..Default::default() }
        .apply(&mut realm)?;
    let threshold = u32::try_from(realm.verifier_threshold)?;
    let endpoints = if args.endpoints.is_empty() { file.endpoints.clone() } else { args.endpoints.clone() };
    if endpoints.is_empty() || args.clients == 0 || args.updates == 0 {
        return Err("bench needs endpoints, at least one client and at least one update".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        // A few connections per endpoint, so that one HTTP/2 connection is not the bottleneck.
        let mut channels: Vec<KeyraftClient<Channel>> = Vec::new();
        let transport = Channels::new(ChannelOptions { connect_timeout_ms: None, ..ChannelOptions::default() })
            .with_tls(keyraft_proto::tls::TlsClient::for_realm(&file)?);
        for _ in 0..4 {
            for e in &endpoints {
                let ch = transport.lazy(e)?;
                channels.push(KeyraftClient::new(ch).max_decoding_message_size(4 << 20));
            }
        }
        let channels = Arc::new(channels);
        let run_id: u32 = rand::random();
        let users: Arc<Vec<String>> =
            Arc::new((0..args.updates).map(|i| format!("bench-{run_id:08x}-{i}@example.com")).collect());
        writeln!(
            out,
            "bench: {} clients, {} endpoints, {} identities, {} lookups",
            args.clients,
            endpoints.len(),
            args.updates,
            args.lookups.max(args.updates)
        )?;

        // Phase 1: lookups (the first pass learns each identity's index).
        let indexes = Arc::new(std::sync::Mutex::new(vec![None; args.updates]));
        let total = args.lookups.max(args.updates);
        let (lat, errors, elapsed) = {
            let (channels, users, indexes, realm) = (channels.clone(), users.clone(), indexes.clone(), realm.clone());
            let verify_every = args.verify_every.max(1);
            drive(args.clients, total, move |_c, i| {
                let mut client = channels[i % channels.len()].clone();
                let user = users[i % users.len()].clone();
                let (indexes, realm) = (indexes.clone(), realm.clone());
                async move {
                    let bytes = lookup(&mut client, &user, threshold).await?;
                    if i < indexes.lock().map(|v| v.len()).unwrap_or(0) || i % verify_every == 0 {
                        let v = verified(&realm, &user, &bytes)?;
                        if let Ok(mut ix) = indexes.lock() {
                            if let Some(slot) = ix.get_mut(i) {
                                *slot = Some(v.index);
                            }
                        }
                    }
                    Ok(())
                }
            })
            .await
        };
        report(out, "lookups", lat.len(), errors, elapsed, lat)?;

        // Phase 2: registrations, signed before the clock starts.
        let owner = SigningKey::from_bytes(&rand::random());
        let indexes = indexes.lock().map_err(|_| "poisoned")?.clone();
        let mut updates = Vec::with_capacity(args.updates);
        for (i, index) in indexes.iter().enumerate() {
            let Some(index) = index else { continue };
            let profile = Profile {
                nonce: rand::random::<[u8; 16]>().to_vec(),
                keys: BTreeMap::from([("ed25519".to_owned(), public_key(&owner).as_bytes().to_vec())]),
            };
            let entry = Entry {
                index: *index,
                version: 0,
                update_policy: Policy::single(public_key(&owner)),
                profile_commitment: profile.commitment(),
            };
            let signatures = sign_entry(&realm.config.realm, &entry, &[&owner]);
            updates.push((users[i].clone(), Update { signed: SignedEntry { entry, signatures }, profile }.encode()));
        }
        let update_bytes = updates.first().map_or(0, |(_, u)| u.len());
        writeln!(out, "updates: registrations of {update_bytes} bytes each")?;
        let updates = Arc::new(updates);
        let n = updates.len();
        let max_epoch = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let wait = args.wait_for_quorum;
        let (lat, errors, elapsed) = {
            let (channels, updates, max_epoch, realm) =
                (channels.clone(), updates.clone(), max_epoch.clone(), realm.clone());
            drive(args.clients, n, move |_c, i| {
                let mut client = channels[i % channels.len()].clone();
                let (user, update) = updates[i].clone();
                let (max_epoch, realm) = (max_epoch.clone(), realm.clone());
                async move {
                    let request = if wait {
                        UpdateRequest {
                            user_id: user.clone(),
                            update,
                            verifier_threshold: Some(threshold),
                            wait_ms: 60_000,
                            registration: None,
                            recovery: false,
                        }
                    } else {
                        UpdateRequest {
                            user_id: user.clone(),
                            update,
                            verifier_threshold: None,
                            wait_ms: 0,
                            registration: None,
                            recovery: false,
                        }
                    };
                    let r = client.update(request).await.map_err(|s| crate::cli::call_failed("update", &s))?;
                    let r = r.into_inner();
                    if wait {
                        let proof: LookupProof = decode_canonical(&r.proof).map_err(|e| e.to_string())?;
                        keyraft_core::verify_lookup_at(&realm, &user, &proof, r.epoch).map_err(|e| e.to_string())?;
                    }
                    max_epoch.fetch_max(r.epoch, Ordering::Relaxed);
                    Ok(())
                }
            })
            .await
        };
        let what = if wait { "updates (until a verified, quorum-ratified proof)" } else { "updates (applied)" };
        report(out, what, lat.len(), errors, elapsed, lat)?;

        // Phase 3: until the last update's epoch is keyserver-ratified.
        let target = max_epoch.load(Ordering::Relaxed);
        let start = Instant::now();
        let mut client = channels[0].clone();
        loop {
            let r = client
                .lookup(LookupRequest {
                    user_id: users[0].clone(),
                    min_epoch: target,
                    wait_ms: 10_000,
                    verifier_threshold: threshold,
                    ..Default::default()
                })
                .await;
            match r {
                Ok(_) => break,
                Err(s) if start.elapsed() < Duration::from_secs(120) => {
                    tracing::debug!(status = %keyraft_client::status_in_words(&s), "waiting for the epoch")
                }
                Err(s) => {
                    return Err(crate::cli::call_failed(
                        &format!("epoch {target} was not ratified in time: lookup"),
                        &s,
                    )
                    .into())
                }
            }
        }
        writeln!(
            out,
            "last update's epoch {target} ratified by a replica majority and {} {:.2} s after the last update returned",
            crate::client_cmd::count(u64::from(threshold), "verifier"),
            start.elapsed().as_secs_f64()
        )?;
        if let Ok(info) = client.get_epoch(GetEpochRequest { epoch: target }).await {
            if let Ok(head) = keyraft_core::EpochHead::from_bytes(&info.into_inner().head) {
                writeln!(out, "epoch {target} holds {} updates", head.update_count)?;
            }
        }

        // Phase 4: lookups of the registered identities.
        if args.reads > 0 {
            let registered: Arc<Vec<String>> = Arc::new(updates.iter().map(|(user, _)| user.clone()).collect());
            let verify_every = args.verify_every.max(1);
            let (lat, errors, elapsed) = {
                let (channels, realm, registered) = (channels.clone(), realm.clone(), registered.clone());
                drive(args.clients, args.reads, move |_c, i| {
                    // Each identity at the replica that answered its first lookup (phase 1
                    // sent identity j to channel j): the replica's VRF cache knows it.
                    let j = i % registered.len();
                    let mut client = channels[j % channels.len()].clone();
                    let user = registered[j].clone();
                    let realm = realm.clone();
                    async move {
                        let bytes = lookup(&mut client, &user, threshold).await?;
                        if i % verify_every == 0 && verified(&realm, &user, &bytes)?.entry.is_none() {
                            return Err(format!("{user} is registered but its lookup answered absent"));
                        }
                        Ok(())
                    }
                })
                .await
            };
            let what = format!("lookups of {} registered identities", registered.len());
            report(out, &what, lat.len(), errors, elapsed, lat)?;
        }
        Ok(())
    })
}

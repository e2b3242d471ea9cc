//! The simulation's network: every channel of the realm (Raft between replicas, forwards,
//! clients, the verifier) is opened through [`SimNet`] by a [`Connector`] that knows which
//! host is dialling. Replicas are named by virtual addresses (`n<id>.sim:1` public,
//! `n<id>.sim:2` peer) that the membership and the realm file hold; the network resolves
//! them to wherever the replica listens now, so a restarted replica keeps its addresses.
//!
//! Each connection is a pair of pumps between two in-memory pipes, the caller's and the one
//! handed to the replica's in-memory listener (no socket anywhere), through which the network
//! applies its faults:
//!
//! - **delay** and **jitter** per chunk (order within a connection is kept, as TCP does;
//!   concurrent connections overtake each other, so messages on different ones reorder);
//! - **loss**: a chunk lost cuts its connection (a TCP stream loses no byte without losing
//!   the rest), so calls in flight fail and are retried on a new one;
//! - **partitions** of ordered pairs of hosts: `from` can no longer reach `to`. A connection
//!   `from` opened to `to` is cut ([`Blocked::Refuse`], as a host that answers with resets)
//!   or goes silent ([`Blocked::BlackHole`], as a cut cable: nothing passes, nothing closes,
//!   and connecting hangs). A partition of one direction only is asymmetric: `to` still
//!   reaches `from` over connections `to` opens, requests and answers both.

use keyraft_proto::transport::{Connecting, Connection, Connector};
use keyraft_server::acceptor::MemoryDialer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Largest chunk a pump moves at once, in bytes.
const CHUNK_BYTES_MAX: usize = 16 * 1024;
/// Capacity of the in-memory pipe under each connection, in bytes.
const PIPE_BYTES: usize = 64 * 1024;

/// Who is dialling or being dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    /// The replica with this Raft node id.
    Replica(u64),
    /// The verifier.
    Verifier,
    /// A client, by number.
    Client(usize),
    /// The test itself asking a replica for its status: never partitioned.
    Operator,
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Replica(id) => write!(f, "node-{id}"),
            Host::Verifier => f.write_str("verifier"),
            Host::Client(k) => write!(f, "client-{k}"),
            Host::Operator => f.write_str("operator"),
        }
    }
}

/// The virtual public address of replica `id`.
pub fn public_addr(id: u64) -> String {
    format!("n{id}.sim:1")
}

/// The virtual peer address of replica `id`.
pub fn peer_addr(id: u64) -> String {
    format!("n{id}.sim:2")
}

/// How a blocked pair of hosts fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// Connections are reset and new ones refused.
    Refuse,
    /// Nothing passes and nothing closes; connecting hangs.
    BlackHole,
}

/// Delay, jitter and loss on every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quality {
    /// Added to every chunk, in milliseconds.
    pub delay_ms: u64,
    /// Up to this much more, at random per chunk, in milliseconds.
    pub jitter_ms: u64,
    /// Chance in 10,000 that a chunk is lost, cutting its connection.
    pub loss_per_10k: u32,
}

#[derive(Debug, Default)]
struct State {
    /// Virtual address -> the host behind it and its listener now (absent: down).
    routes: BTreeMap<String, (Host, Option<MemoryDialer>)>,
    /// Ordered pairs `(from, to)`: `from` cannot reach `to`.
    blocked: BTreeMap<(Host, Host), Blocked>,
    quality: Quality,
    /// Open connections: who opened them to whom, and how to cut them.
    open: Vec<(Host, Host, CancellationToken)>,
    /// How many times each host went down: a connector made before dials nothing after.
    downs: BTreeMap<Host, u64>,
}

/// The realm's network. Clones share it.
#[derive(Clone)]
pub struct SimNet {
    state: Arc<Mutex<State>>,
    /// Bumped on every change of the faults, waking pumps and connects that wait on them.
    changed: watch::Sender<u64>,
    seed: u64,
    connections: Arc<AtomicU64>,
}

impl SimNet {
    /// A network with no faults; `seed` seeds each connection's jitter and loss.
    pub fn new(seed: u64) -> Self {
        Self { state: Arc::default(), changed: watch::channel(0).0, seed, connections: Arc::new(AtomicU64::new(0)) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// The connector `host` dials with.
    ///
    /// It serves one run of `host`: once `host` goes down ([`SimNet::down`]) it connects
    /// nowhere, as a crashed process sends nothing, even while the run winds down.
    pub fn connector(&self, host: Host) -> Arc<dyn Connector> {
        let run = self.downs(host);
        Arc::new(Dialer { net: self.clone(), from: host, run })
    }

    fn downs(&self, host: Host) -> u64 {
        self.lock().downs.get(&host).copied().unwrap_or(0)
    }

    /// Replica `id` listens with `public` and `peer` (after a start).
    pub fn up(&self, id: u64, public: MemoryDialer, peer: MemoryDialer) {
        let mut s = self.lock();
        s.routes.insert(public_addr(id), (Host::Replica(id), Some(public)));
        s.routes.insert(peer_addr(id), (Host::Replica(id), Some(peer)));
    }

    /// Replica `id` is down: its addresses refuse connections, and every connection to or
    /// from it is cut (a crashed process's sockets are closed by its kernel).
    pub fn down(&self, id: u64) {
        let host = Host::Replica(id);
        {
            let mut s = self.lock();
            for addr in [public_addr(id), peer_addr(id)] {
                s.routes.insert(addr, (host, None));
            }
            *s.downs.entry(host).or_default() += 1;
            s.open.retain(|(from, to, cut)| {
                let hit = *from == host || *to == host;
                if hit {
                    cut.cancel();
                }
                !hit
            });
        }
        self.bump();
    }

    /// Every connection `host` opened is cut (a crashed verifier or client).
    pub fn cut_from(&self, host: Host) {
        self.lock().open.retain(|(from, _, cut)| {
            if *from == host {
                cut.cancel();
            }
            *from != host
        });
        self.bump();
    }

    /// `from` can no longer reach `to`.
    pub fn block(&self, from: Host, to: Host, how: Blocked) {
        {
            let mut s = self.lock();
            s.blocked.insert((from, to), how);
            if how == Blocked::Refuse {
                s.open.retain(|(f, t, cut)| {
                    let hit = *f == from && *t == to;
                    if hit {
                        cut.cancel();
                    }
                    !hit
                });
            }
        }
        self.bump();
    }

    /// Both directions between every host of `a` and every host of `b` are blocked.
    pub fn partition(&self, a: &[Host], b: &[Host], how: Blocked) {
        for x in a {
            for y in b {
                self.block(*x, *y, how);
                self.block(*y, *x, how);
            }
        }
    }

    /// Every partition ends (connections that were black holes carry what they held).
    pub fn heal(&self) {
        self.lock().blocked.clear();
        self.bump();
    }

    /// Sets delay, jitter and loss for every connection from now on.
    pub fn set_quality(&self, quality: Quality) {
        self.lock().quality = quality;
        self.bump();
    }

    fn blocked_how(&self, from: Host, to: Host) -> Option<Blocked> {
        self.lock().blocked.get(&(from, to)).copied()
    }
}

struct Dialer {
    net: SimNet,
    from: Host,
    /// The run of `from` it serves: how many times `from` had gone down when it was made.
    run: u64,
}

fn refused(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionRefused, what)
}

impl Connector for Dialer {
    fn connect(&self, addr: &str) -> Connecting {
        let net = self.net.clone();
        let from = self.from;
        let run = self.run;
        let addr = addr.to_owned();
        let crashed = move || refused(format!("{from} is down: a crashed run connects nowhere"));
        Box::pin(async move {
            if net.downs(from) != run {
                return Err(crashed());
            }
            let mut changes = net.changed.subscribe();
            // Resolve, waiting while a black hole lies in between (the caller's connect
            // timeout ends the wait, as it would on a real network).
            let (to, target) = loop {
                let route = net.lock().routes.get(&addr).cloned();
                let Some((to, target)) = route else {
                    return Err(refused(format!("{from}: no host at {addr} in the simulation")));
                };
                match net.blocked_how(from, to) {
                    None => break (to, target),
                    Some(Blocked::Refuse) => return Err(refused(format!("{from} -> {to}: partitioned"))),
                    Some(Blocked::BlackHole) => {
                        if changes.changed().await.is_err() {
                            return Err(refused("the simulation ended".into()));
                        }
                    }
                }
            };
            let Some(target) = target else {
                return Err(refused(format!("{from} -> {to}: down")));
            };
            let (mine, theirs) = tokio::io::duplex(PIPE_BYTES);
            let (accepted, near) = tokio::io::duplex(PIPE_BYTES);
            let cut = CancellationToken::new();
            {
                // Checked again where `down` cuts connections, so that none opened across it
                // survives: `from` or `to` may have gone down while this one was connecting.
                let mut s = net.lock();
                let to_up = s.routes.values().any(|(host, listening)| *host == to && listening.is_some());
                if s.downs.get(&from).copied().unwrap_or(0) != run {
                    return Err(crashed());
                }
                if !to_up {
                    return Err(refused(format!("{from} -> {to}: down")));
                }
                s.open.push((from, to, cut.clone()));
            }
            let n = net.connections.fetch_add(1, Ordering::Relaxed);
            let remote = SocketAddr::from(([127, 0, 0, 1], u16::try_from(n % 60_000).unwrap_or(0) + 1_024));
            if target.connect(Box::new(accepted), remote).is_err() {
                return Err(refused(format!("{from} -> {to}: down")));
            }
            let rng = StdRng::seed_from_u64(net.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            tokio::spawn(carry(net, from, to, theirs, near, cut, rng));
            Ok(Box::new(mine) as Box<dyn Connection>)
        })
    }
}

/// Moves bytes both ways between the caller's pipe and the replica's until either side
/// closes or the connection is cut.
async fn carry(
    net: SimNet,
    from: Host,
    to: Host,
    pipe: tokio::io::DuplexStream,
    near: tokio::io::DuplexStream,
    cut: CancellationToken,
    rng: StdRng,
) {
    let (pipe_r, pipe_w) = tokio::io::split(pipe);
    let (tcp_r, tcp_w) = tokio::io::split(near);
    let rng = Arc::new(Mutex::new(rng));
    let pumps = async {
        tokio::join!(
            pump(&net, from, to, pipe_r, tcp_w, &cut, rng.clone()),
            pump(&net, from, to, tcp_r, pipe_w, &cut, rng),
        )
    };
    tokio::select! {
        _ = pumps => {}
        () = cut.cancelled() => {}
    }
    // Whatever this connection held is dropped here: a reset, as a crash or a lost segment.
    cut.cancel();
}

/// One direction: read chunks, stamp each with its delivery time, deliver in order.
async fn pump(
    net: &SimNet,
    from: Host,
    to: Host,
    mut src: impl tokio::io::AsyncRead + Unpin,
    mut dst: impl tokio::io::AsyncWrite + Unpin,
    cut: &CancellationToken,
    rng: Arc<Mutex<StdRng>>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async {
        let mut last = tokio::time::Instant::now();
        let mut buf = vec![0u8; CHUNK_BYTES_MAX];
        loop {
            let n = match src.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let q = net.lock().quality;
            let (extra, lost) = {
                let mut r = rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                (r.gen_range(0..=q.jitter_ms), r.gen_range(0..10_000) < q.loss_per_10k)
            };
            if lost {
                cut.cancel();
                break;
            }
            last = last.max(tokio::time::Instant::now() + Duration::from_millis(q.delay_ms + extra));
            if tx.send((last, buf[..n].to_vec())).is_err() {
                break;
            }
        }
        drop(tx);
    };
    let write = async {
        let mut changes = net.changed.subscribe();
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            // A black hole holds what reaches it until the partition heals.
            while net.blocked_how(from, to) == Some(Blocked::BlackHole) {
                if changes.changed().await.is_err() {
                    return;
                }
            }
            if dst.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = dst.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyraft_server::acceptor::MemoryListener;

    fn listener(port: u16) -> (MemoryListener, MemoryDialer) {
        MemoryListener::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Seed 1007 lost an acknowledged update this way: a crashed replica's run, still winding
    /// down, reconnected to a peer and sent it entries that its next run no longer had.
    #[tokio::test]
    async fn a_crashed_run_connects_nowhere_while_it_winds_down() {
        let net = SimNet::new(7);
        let (_public2, public2) = listener(1);
        let (_peer2, peer2) = listener(2);
        net.up(2, public2, peer2);
        let (_p1, p1) = listener(3);
        net.up(1, p1.clone(), p1.clone());
        let before_crash = net.connector(Host::Replica(1));
        let mut open = before_crash.connect(&peer_addr(2)).await.expect("node-1 reaches node-2");

        net.down(1);
        let mut buf = [0u8; 1];
        assert_eq!(open.read(&mut buf).await.expect("a cut reads as closed"), 0, "the open connection is cut");
        let err = before_crash.connect(&peer_addr(2)).await.err().expect("the crashed run dials nowhere");
        assert!(err.to_string().contains("node-1 is down"), "{err}");

        // The next run dials with a connector of its own.
        net.up(1, p1.clone(), p1);
        assert!(before_crash.connect(&peer_addr(2)).await.is_err(), "the crashed run stays cut off after a restart");
        net.connector(Host::Replica(1)).connect(&peer_addr(2)).await.expect("the next run reaches node-2");
    }
}

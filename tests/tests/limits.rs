//! Limits a replica enforces on what clients send it, against real replicas: connections that
//! never finish their handshake, idle connections, connections per address and in total,
//! request messages above their method's bound (refused before their body arrives), the
//! `VerifierStream` cap, and requests that are not valid protobuf (the client's fault).
//!
//! The realms here serve plaintext: the tests speak raw HTTP/2 (h2) to see each limit at
//! work. TLS is the first part of the same handshake step; tests/tls.rs holds a TLS
//! handshake to the same deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use bytes::{Buf as _, BufMut as _, Bytes};
use ed25519_dalek::SigningKey;
use keyraft_client::LookupOptions;
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::verifier_frame::Frame;
use keyraft_proto::pb::{VerifierStreamRequest, WatchRequest};
use keyraft_tests::{serial, wait_for, Realm, DEADLINE};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tonic::codegen::http;
use tonic::transport::Channel;

/// `keyraft dev --plaintext`.
const PLAINTEXT: &[&str] = &["--plaintext"];

const ALICE: &str = "alice@example.com";
/// The client connection preface's 24 octets (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: the rest of the client's connection preface.
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
/// Slack on top of a configured timeout before the test calls the replica late: generous, as
/// two cores run three replicas and the test.
const SLACK: Duration = Duration::from_secs(20);

fn limits(t: &mut toml::Table) -> &mut toml::Table {
    t.get_mut("limits").and_then(toml::Value::as_table_mut).expect("[limits]")
}

fn set(t: &mut toml::Table, key: &str, value: i64) {
    limits(t).insert(key.into(), toml::Value::Integer(value));
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// A TCP connection to `to` from the loopback address `source` (Linux routes all of
/// 127.0.0.0/8 to the loopback interface, so each is a distinct remote address to a replica).
async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Sends the client connection preface. True if the replica answered with its SETTINGS frame
/// (the connection was accepted), false if it closed the connection without a byte.
async fn handshake(stream: &mut TcpStream) -> bool {
    let mut hello = PREFACE.to_vec();
    hello.extend_from_slice(&EMPTY_SETTINGS);
    if stream.write_all(&hello).await.is_err() {
        return false;
    }
    let mut header = [0u8; 9];
    match tokio::time::timeout(DEADLINE, stream.read_exact(&mut header)).await.expect("an answer") {
        Ok(_) => {
            assert_eq!(header[3], 4, "the server's first frame is SETTINGS");
            true
        }
        Err(_) => false,
    }
}

/// Waits until the replica closes `stream` (end of file or reset), discarding what it sends;
/// returns how long after `since` that was, None if it is still open `within` after `since`.
async fn closed_within(stream: &mut TcpStream, since: Instant, within: Duration) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((since + within).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn register_alice(realm: &Realm) {
    let users = realm.client(0);
    let owner = SigningKey::generate(&mut rand::rngs::OsRng);
    let keys = BTreeMap::from([("pgp".to_owned(), b"alice-key".to_vec())]);
    let epoch = realm.runtime.block_on(users.register(ALICE, &owner, keys)).unwrap().epoch;
    realm.wait_ratified(0, epoch);
}

fn lookup_works(realm: &Realm, client: &keyraft_client::Client) {
    let answer = realm.runtime.block_on(client.lookup(ALICE, LookupOptions::default())).expect("a lookup");
    assert!(answer.lookup.entry.is_some(), "alice is registered");
}

#[test]
fn connections_that_never_handshake_are_closed_and_no_address_takes_all_connections() {
    let _s = serial();
    let realm = Realm::start_with(PLAINTEXT, |t| {
        set(t, "handshake_ms", 1_000);
        set(t, "connections_per_address_max", 20);
        set(t, "connections_max", 30);
    });
    register_alice(&realm);
    let users = realm.client(0);
    lookup_works(&realm, &users);
    let public = addr(&realm.public_addr(0));
    let peer = addr(&realm.peer_addr(0));

    // Connections that send nothing are closed once the handshake deadline passed, on both
    // listeners.
    realm.runtime.block_on(async {
        let mut silent = Vec::new();
        for i in 0..12 {
            let to = if i % 3 == 0 { peer } else { public };
            silent.push((connect_from(Ipv4Addr::LOCALHOST, to).await, Instant::now()));
        }
        for (s, since) in &mut silent {
            let took = closed_within(s, *since, Duration::from_secs(1) + SLACK)
                .await
                .expect("a connection that never handshakes is closed after handshake_ms");
            assert!(took >= Duration::from_millis(900), "closed after {took:?}, before the 1 s deadline");
        }
    });
    lookup_works(&realm, &users);

    // One address holds its 20 connections; the 21st is closed without an answer, while a
    // client from another address is served.
    let second = Ipv4Addr::new(127, 0, 0, 2);
    let mut held = realm.runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..20 {
            let mut s = connect_from(second, public).await;
            assert!(handshake(&mut s).await, "connections up to the per-address limit are served");
            held.push(s);
        }
        for _ in 0..5 {
            let mut s = connect_from(second, public).await;
            assert!(!handshake(&mut s).await, "a connection past connections_per_address_max is closed");
        }
        held
    });
    lookup_works(&realm, &users);
    lookup_works(&realm, &realm.client(0));
    // Closing one frees its place.
    held.pop();
    wait_for("a closed connection to free its place", || {
        realm.runtime.block_on(async {
            let mut s = connect_from(second, public).await;
            handshake(&mut s).await.then_some(s)
        })
    });

    // The listener's total: a third address gets what is left of 30, not its own 20.
    let third = Ipv4Addr::new(127, 0, 0, 3);
    let accepted = realm.runtime.block_on(async {
        let mut accepted = Vec::new();
        for _ in 0..20 {
            let mut s = connect_from(third, public).await;
            if handshake(&mut s).await {
                accepted.push(s);
            }
        }
        accepted
    });
    // 20 from 127.0.0.2 (one re-opened), the test's clients from 127.0.0.1, and these.
    assert!(accepted.len() < 20, "connections_max caps a listener's connections ({} accepted)", accepted.len());
    for limit in ["limits.connections_per_address_max", "limits.connections_max"] {
        assert!(log_lines(&realm, 1, &format!("refusing connections: {limit} reached")) >= 1, "{limit} logged");
    }
    drop(accepted);
    drop(held);
    // The existing connection of `users` kept being served; fresh clients are again.
    lookup_works(&realm, &users);
    wait_for("fresh clients to be served again", || {
        realm.runtime.block_on(realm.client(0).lookup(ALICE, LookupOptions::default())).ok()
    });
}

#[test]
fn idle_connections_are_closed_but_connections_with_open_streams_are_not() {
    let _s = serial();
    let realm = Realm::start_with(PLAINTEXT, |t| set(t, "idle_ms", 2_000));
    register_alice(&realm);
    let public = addr(&realm.public_addr(0));
    realm.runtime.block_on(async {
        // Handshaken, then silent: closed (GOAWAY, then end of file) once idle for 2 s.
        let mut idle = connect_from(Ipv4Addr::LOCALHOST, public).await;
        assert!(handshake(&mut idle).await);
        let since = Instant::now();
        let took = closed_within(&mut idle, since, Duration::from_secs(2) + SLACK)
            .await
            .expect("an idle connection is closed after idle_ms");
        assert!(took >= Duration::from_millis(1_800), "closed after {took:?}, before the 2 s idle limit");
        eprintln!("an idle connection that answers no ping was closed after {took:?}");

        // A client that answers the GOAWAY's ping is closed without waiting for the 10 s the
        // replica gives one that does not.
        let tcp = connect_from(Ipv4Addr::LOCALHOST, public).await;
        let (_requests, connection) = h2::client::handshake(tcp).await.unwrap();
        let since = Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(2) + SLACK, connection).await;
        let took = since.elapsed();
        assert!(closed.is_ok(), "an idle HTTP/2 client is closed after idle_ms");
        eprintln!("an idle HTTP/2 client was closed after {took:?}");
        assert!(took >= Duration::from_millis(1_800) && took < Duration::from_secs(11), "closed after {took:?}");

        // A Watch keeps its connection busy: events keep coming for three idle periods.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{public}")).unwrap().connect_lazy();
        let request = WatchRequest { user_id: ALICE.into(), verifier_threshold: 0, from_epoch: 0 };
        let mut watch = KeyraftClient::new(channel).watch(request).await.unwrap().into_inner();
        let start = Instant::now();
        let mut events = 0;
        while start.elapsed() < Duration::from_secs(6) {
            let event = tokio::time::timeout(DEADLINE, watch.message()).await.expect("an event");
            assert!(matches!(event, Ok(Some(_))), "the watch goes on: {event:?}");
            events += 1;
        }
        assert!(events >= 2, "{events} events");
    });
}

/// CPU time a process used, in clock ticks (USER_HZ, 100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (which may hold spaces) ; utime and stime are the
    // 14th and 15th fields.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

fn log_lines(realm: &Realm, node: u64, needle: &str) -> usize {
    std::fs::read_to_string(realm.path().join(format!("logs/node-{node}.log")))
        .map(|l| l.lines().filter(|line| line.contains(needle)).count())
        .unwrap_or(0)
}

#[test]
fn a_replica_out_of_file_descriptors_backs_off_instead_of_spinning_and_recovers() {
    let _s = serial();
    let realm = Realm::start_with(PLAINTEXT, |t| set(t, "handshake_ms", 1_000));
    register_alice(&realm);
    let pid = realm.replicas[0].child.as_ref().unwrap().id();
    // Room for a few dozen more descriptors: connections then exhaust them.
    let limit = open_fds(pid) + 32;
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success(), "prlimit failed");
    let public = addr(&realm.public_addr(0));
    const FAILED: &str = "accepting connections failed";
    let used = realm.runtime.block_on(async {
        // The kernel completes these connections (the listen backlog); the replica accepts
        // until it has no descriptor left.
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(connect_from(Ipv4Addr::LOCALHOST, public).await);
        }
        wait_for("the replica to run out of descriptors", || (open_fds(pid) + 2 >= limit).then_some(()));
        // A measurement window, not a wait for a condition.
        let before = cpu_ticks(pid);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let used = cpu_ticks(pid) - before;
        drop(held);
        used
    });
    eprintln!("replica CPU while out of descriptors: {used} ticks in 3 s");
    assert!(used < 150, "the accept loop spins: {used} ticks of CPU in 3 s");
    // Once per burst of failures, not once per failed accept.
    let logged = log_lines(&realm, 1, FAILED);
    assert!((1..=10).contains(&logged), "{logged} lines about failed accepts");
    wait_for("the replica to serve fresh clients again", || {
        realm.runtime.block_on(realm.client(0).lookup(ALICE, LookupOptions::default())).ok()
    });
}

/// Sends a request on a fresh HTTP/2 connection whose gRPC message declares `declared` bytes,
/// but only `sent` of them arrive (the request stays open). Returns the status the replica
/// answers with.
async fn declare(to: SocketAddr, path: &str, declared: u32, sent: usize) -> tonic::Status {
    let tcp = TcpStream::connect(to).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{to}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    let mut data = vec![0u8];
    data.extend_from_slice(&declared.to_be_bytes());
    data.resize(5 + sent, 0);
    body.reserve_capacity(data.len());
    body.send_data(Bytes::from(data), false).unwrap();
    // Well before the replica's own request deadline (35 s), which would end the wait too.
    let response = tokio::time::timeout(Duration::from_secs(25), response)
        .await
        .expect("the replica answers before the declared body arrives")
        .unwrap();
    let status = match tonic::Status::from_header_map(response.headers()) {
        Some(status) => status,
        None => {
            let mut body = response.into_body();
            while body.data().await.is_some() {}
            let trailers = body.trailers().await.unwrap().expect("trailers");
            tonic::Status::from_header_map(&trailers).expect("grpc-status")
        }
    };
    drop(body);
    status
}

#[test]
fn request_messages_above_their_bound_are_refused_before_their_body_arrives() {
    let _s = serial();
    let realm = Realm::start_with(PLAINTEXT, |_| {});
    let public = addr(&realm.public_addr(0));
    realm.runtime.block_on(async {
        for (path, declared, what) in [
            ("/keyraft.v1.Keyraft/Lookup", 4 << 20, "4096"),
            ("/keyraft.v1.Keyraft/Lookup", 5_000, "4096"),
            ("/keyraft.v1.Keyraft/Watch", 5_000, "4096"),
            ("/keyraft.v1.Keyraft/VerifierStream", 1 << 20, "4096"),
            ("/keyraft.v1.Keyraft/Update", 4 << 20, "request_bytes_max"),
            ("/keyraft.v1.Keyraft/Update", 65_537, "request_bytes_max"),
        ] {
            let status = declare(public, path, declared, 16_000).await;
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{path} declaring {declared} bytes: {status:?}");
            let message = status.message();
            assert!(message.contains(what) && message.contains(&declared.to_string()), "{path}: {message}");
        }
    });
    // Within its bound, an Update is read and judged on its contents.
    let garbage = vec![0xff; 60_000];
    let e = realm.runtime.block_on(raw_call(&realm, "/keyraft.v1.Keyraft/Update", garbage)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
}

#[test]
fn verifier_streams_are_capped_per_replica() {
    let _s = serial();
    let realm = Realm::start_with(PLAINTEXT, |t| set(t, "verifier_streams_max", 2));
    let client = |i: usize| {
        let _g = realm.runtime.enter();
        KeyraftClient::new(realm.public_channel(i))
    };
    let open = |c: &mut KeyraftClient<Channel>| {
        let mut c = c.clone();
        let req = realm.signed_stream(VerifierStreamRequest::default());
        async move {
            let mut s = c.verifier_stream(req).await?.into_inner();
            let first = tokio::time::timeout(DEADLINE, s.message()).await.unwrap()?.unwrap();
            assert!(matches!(first.frame, Some(Frame::Init(_))));
            Ok::<_, tonic::Status>(s)
        }
    };
    let mut c0 = client(0);
    let (first, _second) = realm.runtime.block_on(async {
        let first = open(&mut c0).await.unwrap();
        let second = open(&mut c0).await.unwrap();
        let e = open(&mut c0).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
        assert!(e.message().contains("verifier_streams_max"), "{e}");
        // Other replicas count their own streams.
        open(&mut client(1)).await.unwrap();
        (first, second)
    });
    drop(first);
    wait_for("a closed verifier stream to free its place", || realm.runtime.block_on(open(&mut c0)).ok());
}

/// Bytes in, bytes out: requests that no generated client would send.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Calls `path` on replica 0 with `message` as the request's bytes; with `token`, on the peer
/// port.
async fn raw_call_to(
    to: &str,
    path: &'static str,
    message: Vec<u8>,
    token: Option<&str>,
) -> Result<Vec<u8>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{to}")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    grpc.unary(request, http::uri::PathAndQuery::from_static(path), RawCodec).await.map(tonic::Response::into_inner)
}

async fn raw_call(realm: &Realm, path: &'static str, message: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    raw_call_to(&realm.public_addr(0), path, message, None).await
}

#[test]
fn requests_that_are_not_valid_protobuf_are_the_clients_fault() {
    let _s = serial();
    let realm = Realm::start_with(PLAINTEXT, |_| {});
    register_alice(&realm);
    const LOOKUP: &str = "/keyraft.v1.Keyraft/Lookup";
    let bad = [
        // user_id (field 1, a string) holding invalid UTF-8.
        (vec![0x0a, 0x02, 0xff, 0xfe], "invalid UTF-8"),
        // epoch (field 2, a varint) sent as length-delimited.
        (vec![0x12, 0x01, 0x00], "wrong wire type"),
        // user_id declaring 5 bytes, 1 present.
        (vec![0x0a, 0x05, b'a'], "truncated"),
        // An invalid wire type (7).
        (vec![0x0f], "invalid wire type"),
    ];
    realm.runtime.block_on(async {
        for (bytes, what) in &bad {
            let e = raw_call(&realm, LOOKUP, bytes.clone()).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e}");
            assert!(e.message().contains("LookupRequest") || e.message().contains("protobuf"), "{what}: {e}");
        }
        // The same bytes in a well-formed request are served.
        let mut good = vec![0x0a, ALICE.len() as u8];
        good.extend_from_slice(ALICE.as_bytes());
        raw_call(&realm, LOOKUP, good).await.expect("a valid request is answered");
        // The peer service too, once the token is checked.
        let e = raw_call_to(&realm.peer_addr(0), "/keyraft.peer.v1.Peer/Status", vec![0x0f], Some(&realm.token))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    });
}

//! TLS and mutual TLS with real processes (issue 15): who may connect, who may speak as
//! which node, and certificates reloaded without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft::certs::{RealmCa, Validity};
use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::GetEpochRequest;
use keyraft_proto::peer::{RaftMessage, StatusRequest};
use keyraft_proto::transport::{ChannelOptions, Channels};
use keyraft_server::peer_client::{connect_lazy, peer_channels};
use keyraft_tests::{serial, tls_client, wait_for, Realm};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn cluster_token(realm: &Realm) -> String {
    std::fs::read_to_string(realm.path().join("keys/cluster.token")).unwrap().trim().to_owned()
}

/// A peer-service status call on replica `i` with `channels` and the cluster token.
fn status_with(realm: &Realm, i: usize, channels: &Channels) -> Result<(), tonic::Status> {
    let _g = realm.runtime.enter();
    let mut peer = connect_lazy(channels, &realm.peer_addr(i), &cluster_token(realm)).unwrap();
    realm.runtime.block_on(peer.status(StatusRequest {})).map(|_| ())
}

/// A Raft vote request for replica `i`'s node in the name of node `candidate`, at term 0
/// (harmless: every node is past it), with `channels` and the cluster token.
fn vote_as(realm: &Realm, i: usize, candidate: u64, channels: &Channels) -> Result<(), tonic::Status> {
    let request: openraft::raft::VoteRequest<u64> =
        openraft::raft::VoteRequest::new(openraft::Vote::new(0, candidate), None);
    let message = RaftMessage { target: realm.replicas[i].id, payload: postcard::to_allocvec(&request).unwrap() };
    let _g = realm.runtime.enter();
    let mut peer = connect_lazy(channels, &realm.peer_addr(i), &cluster_token(realm)).unwrap();
    realm.runtime.block_on(peer.vote(message)).map(|_| ())
}

/// How a call refused in the TLS handshake ends: the connection fails (UNAVAILABLE) or, where
/// TLS 1.3 lets the client finish first and the server then refuses its certificate, the
/// stream breaks (UNKNOWN, or CANCELLED when hyper sees the close first); never with an answer.
fn refused_in_handshake(e: &tonic::Status) -> bool {
    matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
}

fn tls_dir(realm: &Realm) -> std::path::PathBuf {
    realm.tls_dir().expect("keyraft dev turns TLS on by default")
}

/// Issues a certificate for `names` from the realm's CA into the realm's TLS directory as
/// `stem.crt` and `stem.key`.
fn issue(realm: &Realm, stem: &str, names: &[&str], validity: Validity) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = tls_dir(realm);
    let ca = RealmCa::open(&dir, &realm.name()).unwrap();
    let (cert, key) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    ca.issue(&names, validity, &cert, &key).unwrap();
    (cert, key)
}

fn channels_with(ca: &Path, cert: &Path, key: &Path) -> Channels {
    peer_channels(Some(tls_client(ca, cert, key)))
}

#[test]
fn peers_are_known_by_their_certificates_and_speak_only_as_themselves() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let dir = tls_dir(&realm);
    let ca = dir.join("ca.crt");
    let name = realm.name();

    // The node certificates of the realm work, each in its own name.
    status_with(&realm, 0, &realm.node_channels(3)).expect("node 3's certificate and the cluster token");
    vote_as(&realm, 0, 3, &realm.node_channels(3)).expect("a vote in node 3's own name is answered");

    // Node 3's certificate does not speak for node 2.
    let e = vote_as(&realm, 0, 2, &realm.node_channels(3)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("from node 2 sent with the certificate of node 3"), "{e}");

    // No certificate: the handshake fails, whatever the token.
    let anonymous = peer_channels(Some(keyraft_proto::tls::TlsClient::new(
        keyraft_proto::tls::client_config(
            keyraft_proto::tls::roots(&keyraft_proto::tls::read_certificates(&ca, "ca").unwrap(), "ca").unwrap(),
            None,
        )
        .unwrap(),
    )));
    let e = status_with(&realm, 0, &anonymous).unwrap_err();
    assert!(refused_in_handshake(&e), "{e}");

    // The realm's CA, but a node of another realm: no identity here.
    let (cert, key) = issue(&realm, "other-realm", &[&format!("node-1.other-{name}")], Validity::days(1));
    let e = status_with(&realm, 0, &channels_with(&ca, &cert, &key)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("names no identity in realm"), "{e}");

    // Another realm's CA issued it: the handshake fails.
    let other = tempfile::tempdir().unwrap();
    let other_ca = RealmCa::create(other.path(), &name, Validity::days(1)).unwrap();
    let (cert, key) = other_ca.issue_node(other.path(), 1, &[], Validity::days(1)).unwrap();
    let e = status_with(&realm, 0, &channels_with(&ca, &cert, &key)).unwrap_err();
    assert!(refused_in_handshake(&e), "{e}");

    // Expired: the handshake fails.
    let (cert, key) = issue(&realm, "expired", &[&format!("node-1.{name}")], Validity::expired());
    let e = status_with(&realm, 0, &channels_with(&ca, &cert, &key)).unwrap_err();
    assert!(refused_in_handshake(&e), "{e}");

    // A node checks whom it dials: a server with another node's certificate is refused. Node
    // 1 is reached at replica 2's address while it expects node 1.
    let _g = realm.runtime.enter();
    let mut wrong = keyraft_server::peer_client::connect_lazy_named(
        &realm.node_channels(1),
        &realm.peer_addr(1),
        Some(&format!("node-1.{name}")),
        &cluster_token(&realm),
    )
    .unwrap();
    let e = realm.runtime.block_on(wrong.status(StatusRequest {})).unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    assert!(format!("{e:?}").contains("NotValidForName"), "{e:?}");

    // Each refusal is in the replica's log with its reason.
    wait_for("the refusals in node 1's log", || {
        let log = std::fs::read_to_string(realm.path().join("logs/node-1.log")).unwrap_or_default();
        (log.contains("a raft message in another node's name refused") && log.contains("a peer call refused"))
            .then_some(())
    });
}

#[test]
fn plaintext_clients_cannot_talk_to_tls_listeners_and_http1_is_negotiated_by_alpn() {
    let _s = serial();
    let realm = Realm::start(|t| {
        let limits = t.entry("limits").or_insert_with(|| toml::Value::Table(toml::Table::new()));
        limits.as_table_mut().unwrap().insert("handshake_ms".into(), 1_000.into());
    });
    let _g = realm.runtime.enter();
    // A plaintext gRPC client on the public and the peer listener: its HTTP/2 preface is no
    // TLS hello, and what comes back is no HTTP/2.
    for addr in [realm.public_addr(0), realm.peer_addr(0)] {
        let channel = Channels::new(ChannelOptions::default()).lazy(&addr).unwrap();
        let e = realm.runtime.block_on(KeyraftClient::new(channel).get_epoch(GetEpochRequest::default())).unwrap_err();
        // What the client sees of the TLS alert depends on timing: a connection error, a broken
        // stream, or bytes that are no HTTP/2; never an answer.
        assert!(refused_in_handshake(&e) || e.code() == tonic::Code::Internal, "{addr}: {e}");
    }
    // A connection that never finishes its TLS handshake is closed at the handshake deadline.
    realm.runtime.block_on(async {
        let mut tcp = tokio::net::TcpStream::connect(realm.public_addr(0)).await.unwrap();
        let since = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(keyraft_tests::DEADLINE, tcp.read(&mut buf)).await.expect("closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let took = since.elapsed();
        assert!(took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_secs(20), "{took:?}");
    });
    // The realm file's CA makes a public client work.
    let client = realm.client(0);
    realm
        .runtime
        .block_on(client.lookup("nobody@example.com", keyraft_client::LookupOptions::default()))
        .expect("a TLS client trusting the realm file's CA");

    // HTTP/1.1 by ALPN on the public listener: the gateway's clients share the port.
    let ca = keyraft_proto::tls::read_certificates(&tls_dir(&realm).join("ca.crt"), "ca").unwrap();
    let mut config = keyraft_proto::tls::client_config(keyraft_proto::tls::roots(&ca, "ca").unwrap(), None).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let response = realm.runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(realm.public_addr(0)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        tls.write_all(b"GET / HTTP/1.1\r\nHost: keyraft\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut response = Vec::new();
        tls.read_to_end(&mut response).await.unwrap();
        String::from_utf8_lossy(&response).into_owned()
    });
    assert!(response.starts_with("HTTP/1.1 "), "{response}");
}

/// The presented certificate of `addr` to a TLS client trusting `ca` (with node 2's
/// certificate: the peer listener wants one).
fn served_certificate(realm: &Realm, addr: &str, ca: &Path) -> Vec<u8> {
    let dir = ca.parent().unwrap();
    let config = tls_client(ca, &dir.join("node-2.crt"), &dir.join("node-2.key")).config();
    realm.runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    })
}

#[test]
fn certificates_reload_on_sighup_and_a_bad_file_keeps_the_old_one() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let dir = tls_dir(&realm);
    let ca = dir.join("ca.crt");
    let name = realm.name();
    let before = served_certificate(&realm, &realm.public_addr(0), &ca);
    let pid = |realm: &Realm| nix::unistd::Pid::from_raw(realm.replicas[0].child.as_ref().unwrap().id() as i32);

    // A broken certificate file: the reload fails, the old certificate stays.
    let good = std::fs::read(dir.join("node-1.crt")).unwrap();
    std::fs::write(dir.join("node-1.crt"), b"not a certificate").unwrap();
    nix::sys::signal::kill(pid(&realm), nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_for("the failed reload in the log", || {
        let log = std::fs::read_to_string(realm.path().join("logs/node-1.log")).unwrap_or_default();
        log.contains("reloading TLS failed").then_some(())
    });
    std::fs::write(dir.join("node-1.crt"), good).unwrap();
    assert_eq!(served_certificate(&realm, &realm.public_addr(0), &ca), before);

    // A new certificate (and key): served after SIGHUP, without a restart, on both listeners.
    let hosts = ["localhost", "127.0.0.1"].map(String::from);
    RealmCa::open(&dir, &name).unwrap().issue_node(&dir, 1, &hosts, Validity::days(2)).unwrap();
    let new = keyraft_proto::tls::read_certificates(&dir.join("node-1.crt"), "cert").unwrap()[0].to_vec();
    assert_ne!(new, before);
    nix::sys::signal::kill(pid(&realm), nix::sys::signal::Signal::SIGHUP).unwrap();
    for (listener, addr) in [("public", realm.public_addr(0)), ("peer", realm.peer_addr(0))] {
        wait_for(&format!("the new certificate on the {listener} listener"), || {
            (served_certificate(&realm, &addr, &ca) == new).then_some(())
        });
    }
    status_with(&realm, 0, &realm.node_channels(2)).expect("node 2 reaches node 1 with its new certificate");
    // The realm goes on: node 1's new certificate is accepted by its peers.
    let epoch = realm.status(0).unwrap().last_epoch;
    wait_for("epochs after the reload", || (realm.status(1)?.last_epoch > epoch + 2).then_some(()));
}

#[test]
fn a_node_refuses_to_start_without_tls_settings_or_with_another_nodes_certificate() {
    let _s = serial();
    let realm = Realm::create_with(&[], |t| {
        if let Some(toml::Value::Table(tls)) = t.get_mut("tls") {
            tls.insert("cert_file".into(), "tls/node-2.crt".into());
            tls.insert("key_file".into(), "tls/node-2.key".into());
        }
    });
    let out = realm.run_cli(&["server", "--config", "node-1.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("is not a valid certificate of node-1.{}", realm.name())), "{err}");

    // A TLS key others can read is refused like any secret file.
    use std::os::unix::fs::PermissionsExt as _;
    let key = realm.path().join("tls/node-2.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = realm.run_cli(&["server", "--config", "node-2.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("key_file") && err.contains("others can read") && err.contains("chmod 600"), "{err}");

    let config = realm.path().join("node-3.toml");
    let mut table: toml::Table = toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    table.remove("tls");
    std::fs::write(&config, toml::to_string(&table).unwrap()).unwrap();
    let out = realm.run_cli(&["server", "--config", "node-3.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("[tls] is missing") && err.contains("plaintext = true"), "{err}");
}

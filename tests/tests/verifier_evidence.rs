//! A verifier fed a tampered epoch (through a test-only stream source that relays a real
//! replica's stream and alters one update) writes evidence, halts, and signs nothing more.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_proto::pb::keyraft_client::KeyraftClient;
use keyraft_proto::pb::keyraft_server::{Keyraft, KeyraftServer};
use keyraft_proto::pb::verifier_frame::Frame;
use keyraft_proto::pb::{self, VerifierFrame};
use keyraft_tests::{edit_config, keyraft_bin, serial, wait_for, Realm};
use std::pin::Pin;
use tonic::{Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// Relays `upstream`'s verifier stream, flipping one byte of the first update of epoch
/// `tamper_epoch`. Every other call is unimplemented.
struct Tampering {
    upstream: String,
    tamper_epoch: u64,
}

fn nope<T>() -> Result<T, Status> {
    Err(Status::unimplemented("test stream source"))
}

#[tonic::async_trait]
impl Keyraft for Tampering {
    async fn lookup(&self, _: Request<pb::LookupRequest>) -> Result<Response<pb::LookupResponse>, Status> {
        nope()
    }
    async fn update(&self, _: Request<pb::UpdateRequest>) -> Result<Response<pb::UpdateResponse>, Status> {
        nope()
    }
    async fn get_update_status(
        &self,
        _: Request<pb::GetUpdateStatusRequest>,
    ) -> Result<Response<pb::GetUpdateStatusResponse>, Status> {
        nope()
    }
    async fn get_epoch(&self, _: Request<pb::GetEpochRequest>) -> Result<Response<pb::EpochInfo>, Status> {
        nope()
    }
    async fn list_epochs(&self, _: Request<pb::ListEpochsRequest>) -> Result<Response<pb::ListEpochsResponse>, Status> {
        nope()
    }
    async fn history(&self, _: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        nope()
    }
    type WatchStream = BoxStream<pb::WatchEvent>;
    async fn watch(&self, _: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        nope()
    }
    type VerifierStreamStream = BoxStream<VerifierFrame>;
    async fn verifier_stream(
        &self,
        request: Request<pb::VerifierStreamRequest>,
    ) -> Result<Response<Self::VerifierStreamStream>, Status> {
        let mut up = KeyraftClient::connect(format!("http://{}", self.upstream))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let stream = up.verifier_stream(request.into_inner()).await?.into_inner();
        let tamper_epoch = self.tamper_epoch;
        let mut tampered = false;
        let relayed = tokio_stream::StreamExt::map(stream, move |item| {
            let mut frame = item?;
            if let Some(Frame::Updates(u)) = &mut frame.frame {
                if u.epoch == tamper_epoch && !tampered && !u.signed_entries.is_empty() {
                    let entry = &mut u.signed_entries[0];
                    let last = entry.len() - 1;
                    entry[last] ^= 0x01; // inside the last signature
                    tampered = true;
                }
            }
            Ok(frame)
        });
        Ok(Response::new(Box::pin(relayed)))
    }
    async fn push_ratification(
        &self,
        _: Request<pb::PushRatificationRequest>,
    ) -> Result<Response<pb::PushRatificationResponse>, Status> {
        nope()
    }
}

#[test]
fn a_tampered_update_makes_the_verifier_write_evidence_and_halt() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let users = realm.client(0);
    for i in 0..6 {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        realm.runtime.block_on(users.register(&format!("e{i}@example.com"), &key, Default::default())).unwrap();
    }
    // The epoch to tamper with holds at least one update.
    let tamper_epoch = (1..=realm.status(0).unwrap().ratified_epoch)
        .find(|e| {
            let _g = realm.runtime.enter();
            let mut c = KeyraftClient::new(
                tonic::transport::Endpoint::from_shared(format!("http://{}", realm.public_addr(0)))
                    .unwrap()
                    .connect_lazy(),
            );
            let info = realm.runtime.block_on(c.get_epoch(pb::GetEpochRequest { epoch: *e })).unwrap().into_inner();
            keyraft_core::EpochHead::from_bytes(&info.head).unwrap().update_count > 0
        })
        .expect("an epoch with updates");

    let listener = realm.runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let source = listener.local_addr().unwrap().to_string();
    let service = Tampering { upstream: realm.public_addr(0), tamper_epoch };
    realm.runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(KeyraftServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let config = realm.path().join("verifier-1.toml");
    let data = realm.path().join("data/verifier-1");
    edit_config(&config, &|t: &mut toml::Table| {
        t.insert("endpoints".into(), toml::Value::Array(vec![source.clone().into()]));
    });
    let mut child = std::process::Command::new(keyraft_bin())
        .args(["verifier", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for("the verifier to stop on the tampered epoch", || child.try_wait().unwrap());
    assert!(!status.success(), "a verifier that found a lie exits with an error");
    let evidence = data.join(format!("evidence/epoch-{tamper_epoch}.json"));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&evidence).unwrap()).unwrap();
    assert_eq!(record["epoch"], tamper_epoch);
    assert!(record["reason"].as_str().unwrap().contains("breaks the rules"), "{record}");
    assert!(!record["updates"].as_array().unwrap().is_empty());
    assert!(record["received_head"].is_string());
    assert!(data.join("HALTED").exists());
    // Restarted, it refuses to run until an operator removes HALTED.
    let out = std::process::Command::new(keyraft_bin()).args(["verifier", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("halted"), "{}", String::from_utf8_lossy(&out.stderr));
}

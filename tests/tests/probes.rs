//! Health and readiness probes (issue 16 part 2) against real replicas: gRPC health checks and
//! server reflection on the public listener, `/healthz` and `/readyz` on the metrics listener,
//! and `keyraft health` (what a container's health check runs).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use keyraft_tests::{serial, wait_for, Realm};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn metrics_addr(realm: &Realm, i: usize) -> String {
    realm.replicas[i]
        .listening
        .as_ref()
        .unwrap()
        .metrics_addr
        .expect("keyraft dev configures metrics_listen")
        .to_string()
}

/// `keyraft health` on replica `i`: whether it exited 0, and what it said.
fn health(realm: &Realm, i: usize, live: bool) -> (bool, String) {
    let addr = metrics_addr(realm, i);
    let mut args = vec!["health", "--addr", &addr];
    if live {
        args.push("--live");
    }
    let out = realm.run_cli(&args);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn grpc_status(realm: &Realm, i: usize, service: &str) -> Option<ServingStatus> {
    let mut client = HealthClient::new(realm.public_channel(i));
    let request = HealthCheckRequest { service: service.into() };
    let reply = realm.runtime.block_on(client.check(request)).ok()?.into_inner();
    ServingStatus::try_from(reply.status).ok()
}

#[test]
fn probes_say_ready_alive_and_not_ready_without_a_leader() {
    let _s = serial();
    let mut realm = Realm::start(|_| {});
    for i in 0..3 {
        wait_for("every replica ready", || health(&realm, i, false).0.then_some(()));
        let (ok, said) = health(&realm, i, true);
        assert!(ok && said.contains("/healthz: ok"), "{said}");
        wait_for("gRPC SERVING", || (grpc_status(&realm, i, "") == Some(ServingStatus::Serving)).then_some(()));
        assert_eq!(grpc_status(&realm, i, "keyraft.v1.Keyraft"), Some(ServingStatus::Serving));
    }

    // Reflection lists the public services, not the peer service.
    let services = realm.runtime.block_on(async {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let mut client = ServerReflectionClient::new(realm.public_channel(0));
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        match answer.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        }
    });
    for name in ["keyraft.v1.Keyraft", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"] {
        assert!(services.iter().any(|s| s == name), "{name} in {services:?}");
    }
    assert!(!services.iter().any(|s| s.contains("peer")), "{services:?}");

    // The leader and one follower gone: the last replica is alive but has no leader.
    let leader = realm.wait_leader();
    let follower = (leader + 1) % 3;
    let last = (leader + 2) % 3;
    realm.kill(leader);
    realm.kill(follower);
    let said = wait_for("the last replica not ready", || {
        let (ok, said) = health(&realm, last, false);
        (!ok).then_some(said)
    });
    assert!(said.contains("503") && said.contains("no leader known"), "{said}");
    let (ok, said) = health(&realm, last, true);
    assert!(ok, "alive without a leader: {said}");
    wait_for("gRPC NOT_SERVING", || (grpc_status(&realm, last, "") == Some(ServingStatus::NotServing)).then_some(()));

    // Back: ready again.
    realm.start_replica(leader);
    realm.start_replica(follower);
    wait_for("ready again", || health(&realm, last, false).0.then_some(()));
    wait_for("gRPC SERVING again", || (grpc_status(&realm, last, "") == Some(ServingStatus::Serving)).then_some(()));
    // A replica nobody listens for: a clear error, not a hang.
    let out = realm.run_cli(&["health", "--addr", "127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1/readyz"), "{out:?}");
}

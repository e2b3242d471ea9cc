//! The HTTP/JSON gateway (issue 16 part 3), called by a real HTTP client (reqwest) over
//! HTTP/1.1 and HTTP/2, with TLS and in plaintext: its proofs verify with the client library,
//! exactly as gRPC's do, and its errors are JSON with the gRPC code and an HTTP status.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use base64::Engine as _;
use keyraft_client::{ClientOptions, ProofChecker};
use keyraft_core::Canonical as _;
use keyraft_tests::{serial, Realm};
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug)]
enum Http {
    One,
    Two,
}

/// An HTTP client for replica `i`'s public port: HTTPS trusting the realm's CA (ALPN for
/// `version`), or plaintext; and the port's base URL.
fn http_client(realm: &Realm, i: usize, version: Http) -> (reqwest::Client, String) {
    // reqwest's plaintext client wants a process default too.
    keyraft_proto::tls::install_default_provider();
    let addr = realm.public_addr(i);
    let builder = reqwest::Client::builder().no_proxy();
    let builder = match version {
        Http::One => builder.http1_only(),
        Http::Two => builder.http2_prior_knowledge(),
    };
    match realm.tls_dir() {
        Some(dir) => {
            use keyraft_proto::tls::{client_config, read_certificates, roots};
            let ca = read_certificates(&dir.join("ca.crt"), "ca").unwrap();
            let mut tls = client_config(roots(&ca, "ca").unwrap(), None).unwrap();
            tls.alpn_protocols = vec![match version {
                Http::One => b"http/1.1".to_vec(),
                Http::Two => b"h2".to_vec(),
            }];
            (builder.tls_backend_preconfigured(tls).build().unwrap(), format!("https://{addr}"))
        }
        None => (builder.build().unwrap(), format!("http://{addr}")),
    }
}

/// `GET url`: the HTTP status, the answer's version, its `x-request-id` and its JSON.
fn get(realm: &Realm, client: &reqwest::Client, url: &str) -> (u16, reqwest::Version, String, Value) {
    realm.runtime.block_on(async {
        let r = client.get(url).header("x-request-id", "gateway-test-1").send().await.unwrap();
        let status = r.status().as_u16();
        let version = r.version();
        let id = r.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        (status, version, id, body)
    })
}

fn post(realm: &Realm, client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    realm.runtime.block_on(async {
        let r =
            client.post(url).header("content-type", "application/json").body(body.to_string()).send().await.unwrap();
        let status = r.status().as_u16();
        (status, serde_json::from_slice(&r.bytes().await.unwrap()).unwrap())
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(value: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(value.as_str().expect("a base64 string")).unwrap()
}

/// The client library's checks, requiring the replica majority but no verifier (none runs).
fn checker(realm: &Realm) -> ProofChecker {
    let options = ClientOptions { verifier_threshold: Some(0), ..ClientOptions::default() };
    ProofChecker::new(&realm.realm_file(), &options).unwrap()
}

/// Verifies a gateway's proof as the current answer with the client library.
fn verify(realm: &Realm, user: &str, proof: Vec<u8>) -> keyraft_client::LookupAnswer {
    let checker = checker(realm);
    checker.accept_current(user, proof, keyraft_client::now_ms(), None).unwrap()
}

#[test]
fn the_gateway_registers_and_looks_up_with_proofs_that_verify_over_http1_and_http2() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let leader = realm.wait_leader();
    let follower = (leader + 1) % 3;
    let (h1, base) = http_client(&realm, follower, Http::One);
    let (h2, _) = http_client(&realm, leader, Http::Two);
    let base_h2 = format!("https://{}", realm.public_addr(leader));

    // A registration built and signed by the client library, sent as JSON to a follower.
    let user = "gateway@example.com";
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let client = realm.client(leader);
    let prepared = realm.runtime.block_on(client.registration(user, &key).prepare()).unwrap();
    let body = json!({"user_id": user, "update": b64(&prepared.update.encode()), "wait_ms": 20_000});
    let (status, answer) = post(&realm, &h1, &format!("{base}/v1/updates"), &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(unb64(&answer["update_id"]), prepared.update_id());
    assert_eq!(answer["duplicate"], false);
    let epoch = answer["epoch"].as_u64().unwrap();
    assert!(epoch >= 1, "{answer}");
    // Idempotent, as over gRPC.
    let (status, again) = post(&realm, &h2, &format!("{base_h2}/v1/updates"), &body);
    assert_eq!((status, again["duplicate"].as_bool(), again["epoch"].as_u64()), (200, Some(true), Some(epoch)));

    // Its status, the ids given in the URL-safe alphabet.
    let url_safe = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let (id, index) = (url_safe(&prepared.update_id()), url_safe(&prepared.update.signed.entry.index.0));
    let (status, _, _, s) =
        get(&realm, &h1, &format!("{base}/v1/update-status?update_id={id}&index={index}&version=0"));
    assert_eq!((status, s["state"].as_str(), s["epoch"].as_u64()), (200, Some("IN_EPOCH"), Some(epoch)), "{s}");

    // Looked up over HTTP/1.1 and HTTP/2: the proofs verify with the client library.
    realm.wait_ratified(follower, epoch);
    realm.wait_ratified(leader, epoch);
    let lookup = format!("/v1/lookup/{user}?min_epoch={epoch}&wait_ms=10000");
    for (client, base, version) in [(&h1, &base, reqwest::Version::HTTP_11), (&h2, &base_h2, reqwest::Version::HTTP_2)]
    {
        let (status, got, id, answer) = get(&realm, client, &format!("{base}{lookup}"));
        assert_eq!((status, got), (200, version), "{answer}");
        assert_eq!(id, "gateway-test-1", "the client's request id comes back");
        let proof = unb64(&answer["proof"]);
        let verified = verify(&realm, user, proof.clone());
        let (entry, profile) = verified.lookup.entry.as_ref().expect("registered");
        assert_eq!(entry.version, 0);
        assert_eq!(profile.keys, prepared.update.profile.keys);
        assert!(verified.lookup.epoch() >= epoch);
        // The independent implementation of docs/protocol.md agrees, from the JSON's bytes.
        let file = realm.path().join("gateway.proof");
        std::fs::write(&file, &proof).unwrap();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/verify_proof.py");
        let now = keyraft_client::now_ms().to_string();
        let out = std::process::Command::new("python3")
            .arg(&script)
            .arg(realm.path().join("realm.json"))
            .args([file.to_str().unwrap(), user, &now, "--verifier-threshold", "0"])
            .output()
            .expect("python3 runs the independent verifier (it is on every CI machine)");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // One flipped byte and it no longer verifies.
        let mut bad = proof;
        let i = bad.len() / 2;
        bad[i] ^= 1;
        assert!(checker(&realm).accept_current(user, bad, keyraft_client::now_ms(), None).is_err());
    }

    // Epochs: the newest, one by number, a page; all replicas serve the same head.
    let (status, _, _, newest) = get(&realm, &h1, &format!("{base}/v1/epochs/latest"));
    assert_eq!(status, 200, "{newest}");
    assert!(newest["replica_signatures"].as_array().unwrap().len() >= 2, "{newest}");
    let (_, _, _, mine) = get(&realm, &h1, &format!("{base}/v1/epochs/{epoch}"));
    let (_, _, _, theirs) = get(&realm, &h2, &format!("{base_h2}/v1/epochs/{epoch}"));
    assert_eq!(mine["head"], theirs["head"]);
    let head = keyraft_core::decode_canonical::<keyraft_core::EpochHead>(&unb64(&mine["head"])).unwrap();
    assert_eq!(head.epoch, epoch);
    realm.wait_ratified(follower, 2);
    let (status, _, _, page) = get(&realm, &h1, &format!("{base}/v1/epochs?start_epoch=1&page_size=1"));
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["epochs"].as_array().unwrap().len(), 1, "{page}");
    let token = page["next_page_token"].as_str().unwrap();
    assert!(!token.is_empty());
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(unb64(&page["next_page_token"]));
    let (status, _, _, next) =
        get(&realm, &h1, &format!("{base}/v1/epochs?start_epoch=1&page_size=1&page_token={token}"));
    assert_eq!(status, 200, "{next}");
    let first = keyraft_core::decode_canonical::<keyraft_core::EpochHead>(&unb64(&next["epochs"][0]["head"])).unwrap();
    assert_eq!(first.epoch, 2, "the second page follows the first");

    // History: the registration, with a proof at its epoch.
    let (status, _, _, history) = get(&realm, &h2, &format!("{base_h2}/v1/history/{user}"));
    assert_eq!(status, 200, "{history}");
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "{history}");
    assert_eq!((versions[0]["version"].as_u64(), versions[0]["epoch"].as_u64()), (Some(0), Some(epoch)));
    assert!(history["current"].is_string());
}

#[test]
fn gateway_errors_are_json_with_the_grpc_code_and_an_http_status() {
    let _s = serial();
    let realm = Realm::start(|_| {});
    let leader = realm.wait_leader();
    let (client, base) = http_client(&realm, leader, Http::One);

    let error = |status: u16, body: &Value, code: &str, words: &str| {
        assert_eq!(body["code"], code, "{body}");
        assert!(body["message"].as_str().unwrap().contains(words), "{body}");
        let _ = status;
    };
    // A field that is not base64, named.
    let (status, body) =
        post(&realm, &client, &format!("{base}/v1/updates"), &json!({"user_id": "a@example.com", "update": "%%%"}));
    assert_eq!(status, 400);
    error(status, &body, "INVALID_ARGUMENT", "update: not base64");
    // Bytes that are no update: the service's own check.
    let (status, body) =
        post(&realm, &client, &format!("{base}/v1/updates"), &json!({"user_id": "a@example.com", "update": "AAAA"}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "INVALID_ARGUMENT", "{body}");
    // A misspelt option is refused, not ignored.
    let (status, body) =
        post(&realm, &client, &format!("{base}/v1/updates"), &json!({"user_id": "a", "update": "", "wait": 1}));
    assert_eq!(status, 400);
    error(status, &body, "INVALID_ARGUMENT", "unknown field `wait`");
    // Not JSON at all.
    let (status, body) = realm.runtime.block_on(async {
        let r = client.post(format!("{base}/v1/updates")).body("hello").send().await.unwrap();
        (r.status().as_u16(), serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap())
    });
    assert_eq!(status, 400);
    error(status, &body, "INVALID_ARGUMENT", "not an update's JSON");
    // A body over the limit: refused before it is parsed.
    let huge = json!({"user_id": "a", "update": "A".repeat(200_000)});
    let (status, close, body) = realm.runtime.block_on(async {
        let r = client.post(format!("{base}/v1/updates")).body(huge.to_string()).send().await.unwrap();
        let close = r.headers().get("connection").is_some_and(|v| v == "close");
        (r.status().as_u16(), close, serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap())
    });
    assert_eq!(status, 429);
    // The body was read to its end (and dropped), so the client got the answer rather than a
    // reset connection, and the connection serves the next request.
    assert!(!close, "a body read to its end leaves the connection open");
    error(status, &body, "RESOURCE_EXHAUSTED", "limits.request_bytes_max");
    // Browsers on any page may call it: a CORS preflight, and the header on answers.
    let (status, allow_origin, allow_methods) = realm.runtime.block_on(async {
        let r = client
            .request(reqwest::Method::OPTIONS, format!("{base}/v1/updates"))
            .header("origin", "https://example.org")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        let h = |name: &str| r.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        (r.status().as_u16(), h("access-control-allow-origin"), h("access-control-allow-methods"))
    });
    assert_eq!((status, allow_origin.as_deref()), (204, Some("*")));
    assert!(allow_methods.unwrap().contains("POST"));
    let origin = realm.runtime.block_on(async {
        let r = client.get(format!("{base}/v1/epochs/latest")).send().await.unwrap();
        r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned())
    });
    assert_eq!(origin.as_deref(), Some("*"));
    // A query parameter that is not a number.
    let (status, _, _, body) = get(&realm, &client, &format!("{base}/v1/lookup/a@example.com?epoch=soon"));
    assert_eq!(status, 400);
    error(status, &body, "INVALID_ARGUMENT", "the query");
    // An epoch far in the future: the service's NOT_FOUND.
    let (status, _, _, body) = get(&realm, &client, &format!("{base}/v1/epochs/1000000"));
    assert_eq!(status, 404, "{body}");
    error(status, &body, "NOT_FOUND", "epoch 1000000 does not exist");
    let (status, _, _, body) = get(&realm, &client, &format!("{base}/v1/epochs/yesterday"));
    assert_eq!(status, 400);
    error(status, &body, "INVALID_ARGUMENT", "not a number");
    // A page token this realm did not issue.
    let (status, _, _, body) = get(&realm, &client, &format!("{base}/v1/epochs?page_token=AAAA"));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "INVALID_ARGUMENT", "{body}");
    // No such route; a route with the wrong method.
    let (status, _, _, body) = get(&realm, &client, &format!("{base}/v2/lookup"));
    assert_eq!(status, 404);
    error(status, &body, "NOT_FOUND", "/v1/lookup");
    let (status, _, _, body) = get(&realm, &client, &format!("{base}/v1/updates"));
    assert_eq!(status, 501);
    error(status, &body, "UNIMPLEMENTED", "GET is not served");
}

#[test]
fn a_plaintext_realm_serves_the_gateway_over_http1_and_h2c_beside_grpc() {
    let _s = serial();
    let realm = Realm::start_with(&["--plaintext"], |_| {});
    let leader = realm.wait_leader();
    let epoch = realm.status(leader).unwrap().last_epoch;
    for version in [Http::One, Http::Two] {
        let (client, base) = http_client(&realm, leader, version);
        let (status, _, _, answer) = get(&realm, &client, &format!("{base}/v1/lookup/nobody@example.com"));
        assert_eq!(status, 200, "{version:?}: {answer}");
        let verified = verify(&realm, "nobody@example.com", unb64(&answer["proof"]));
        assert!(verified.lookup.entry.is_none());
        assert!(verified.lookup.epoch() >= epoch.min(1));
    }
    // gRPC on the same port still works.
    let lookup = realm.runtime.block_on(realm.client(leader).lookup("nobody@example.com", Default::default()));
    assert!(lookup.unwrap().lookup.entry.is_none());
    // The gateway's calls are in the metrics under their routes.
    let metrics_addr = realm.replicas[leader].listening.as_ref().unwrap().metrics_addr.unwrap();
    let (client, _) = http_client(&realm, leader, Http::One);
    let text = realm.runtime.block_on(async {
        client.get(format!("http://{metrics_addr}/metrics")).send().await.unwrap().text().await.unwrap()
    });
    assert!(
        text.contains(
            r#"keyraft_request_duration_seconds_count{listener="public",rpc="GET /v1/lookup/{user_id}",code="0"} 2"#
        ),
        "{text}"
    );
}

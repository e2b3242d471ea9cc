//! Test support for the `oidc` registration method: an issuer with a real Ed25519 key that
//! mints ID tokens, and a JWKS server on loopback. For this crate's tests and the
//! multi-process tests; not part of the replica.
//!
//! The server crate has no `testing` feature, so this module is always compiled and hidden
//! from the docs. It holds no secret of any deployment: every key is made on the spot.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::nonce_for_update;

/// The PKCS#8 v1 DER prefix of an Ed25519 private key (RFC 8410, section 7): the 32-byte seed
/// follows. jsonwebtoken takes Ed25519 signing keys only as PKCS#8.
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// The issuer identifier [`TestIssuer::new`] uses.
pub const TEST_ISSUER: &str = "https://issuer.keyraft.test";
/// The audience (client id) [`TestIssuer::claims`] uses.
pub const TEST_AUDIENCE: &str = "keyraft-test-realm";

/// An OpenID provider for tests: one Ed25519 key with a random kid.
pub struct TestIssuer {
    issuer: String,
    kid: String,
    key: EncodingKey,
    public: [u8; 32],
}

impl std::fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestIssuer").field("issuer", &self.issuer).field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl Default for TestIssuer {
    fn default() -> Self {
        Self::new()
    }
}

impl TestIssuer {
    /// An issuer named [`TEST_ISSUER`] with a fresh key.
    pub fn new() -> Self {
        Self::with_issuer(TEST_ISSUER)
    }

    /// An issuer named `issuer` with a fresh key.
    pub fn with_issuer(issuer: &str) -> Self {
        let signing = SigningKey::generate(&mut rand::rngs::OsRng);
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(signing.as_bytes());
        let kid_bytes: [u8; 8] = rand::random();
        Self {
            issuer: issuer.to_owned(),
            kid: format!("test-{}", hex::encode(kid_bytes)),
            key: EncodingKey::from_ed_der(&der),
            public: signing.verifying_key().to_bytes(),
        }
    }

    /// The issuer identifier (the tokens' `iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "use": "sig",
            "alg": "EdDSA",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(self.public),
        })
    }

    /// A JWKS document with this issuer's one key.
    pub fn jwks_json(&self) -> String {
        json!({ "keys": [self.jwk()] }).to_string()
    }

    /// A claim set that registers `user_id` for the update `update_id` at `now_ms`, valid for
    /// ten minutes: a starting point tests then break one claim of.
    pub fn claims(&self, user_id: &str, update_id: &[u8; 32], now_ms: u64) -> Value {
        let now_s = now_ms / 1000;
        json!({
            "iss": self.issuer,
            "aud": TEST_AUDIENCE,
            "sub": format!("subject-{user_id}"),
            "email": user_id,
            "email_verified": true,
            "nonce": nonce_for_update(update_id),
            "iat": now_s,
            "exp": now_s + 600,
        })
    }

    /// Signs `claims` with this issuer's key (EdDSA, header `kid` set).
    ///
    /// # Panics
    /// Never for a `Value`: serializing one cannot fail, and the key is well formed.
    pub fn mint(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        #[allow(clippy::expect_used)]
        jsonwebtoken::encode(&header, claims, &self.key).expect("an Ed25519 test key signs any JSON value")
    }
}

/// A JWKS endpoint on 127.0.0.1: answers every request with the current body (HTTP/1.1, one
/// request per connection). Stops when dropped.
#[derive(Debug)]
pub struct JwksServer {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// The most request bytes the server reads before answering: a GET is small.
const REQUEST_MAX_BYTES: usize = 16 * 1024;

impl JwksServer {
    /// Starts serving `body` on an ephemeral loopback port.
    ///
    /// # Errors
    /// The port cannot be bound.
    pub async fn start(body: String) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let body = Arc::new(Mutex::new(body));
        let requests = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(listener, Arc::clone(&body), Arc::clone(&requests)));
        Ok(Self { addr, body, requests, task })
    }

    /// The JWKS URL.
    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// Replaces the body served from now on (a key rotation).
    pub fn set_body(&self, body: String) {
        *self.body.lock().unwrap_or_else(PoisonError::into_inner) = body;
    }

    /// How many requests have been answered.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, body: Arc<Mutex<String>>, requests: Arc<AtomicUsize>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let body = Arc::clone(&body);
        let requests = Arc::clone(&requests);
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < REQUEST_MAX_BYTES {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let body = body.lock().unwrap_or_else(PoisonError::into_inner).clone();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            requests.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

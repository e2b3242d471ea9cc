//! Registration methods: who may claim an identity that has no entry yet.
//!
//! The realm configuration names, for each namespace (a glob on the canonical user id), the
//! methods that may register a new identity there (docs/protocol.md section 6). Each method
//! is checked here, at every replica's edge, before the update is proposed; the proof of
//! registration is not kept, so verifiers cannot check it (see the trust model in
//! docs/protocol.md).
pub mod oidc;

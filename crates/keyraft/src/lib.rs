//! # keyraft
//!
//! The `keyraft` command: the library behind the thin binary, so that every subcommand is a
//! function tests can call.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_realm;
pub mod answer;
pub mod bench;
pub mod bench_etcd;
pub mod certs;
pub mod cli;
pub mod client_cmd;
pub mod cluster_cmd;
pub mod demo;
pub mod dev;
pub mod health_cmd;
pub mod history_out;
pub mod json;
pub mod restore_cmd;
pub mod server_cmd;
pub mod tls_cmd;
pub mod verifier_cmd;

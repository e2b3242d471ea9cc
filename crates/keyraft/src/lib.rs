//! # keyraft
//!
//! The `keyraft` command: the library behind the thin binary, so that every subcommand is a
//! function tests can call.
#![forbid(unsafe_code)]

pub mod cli;
pub mod demo;

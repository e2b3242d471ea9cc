//! Command-line parsing and dispatch.

use clap::{Parser, Subcommand};

/// keyraft: an end-to-end-verifiable keyserver.
#[derive(Debug, Parser)]
#[command(name = "keyraft", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a whole realm in this process (three replica keys, one verifier, in-memory or
    /// sled storage), registers and updates identities, publishes epochs and verifies
    /// lookups, printing each step.
    Demo(crate::demo::DemoArgs),
}

/// Sets up logging from `RUST_LOG` (default: warnings).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Demo(args) => crate::demo::run(&args, &mut std::io::stdout()),
    }
}

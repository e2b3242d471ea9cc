//! `keyraft keygen` and `keyraft key migrate`: an owner's key files.

use super::CmdResult;
use ed25519_dalek::SigningKey;
use keyraft_client::public_key;
use keyraft_core::key_file;
use std::io::Write;
use std::path::PathBuf;

/// Options of `keyraft keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the new secret key file (created readable by the owner only); the public
    /// key file is written next to it, with `.pub` appended to the name.
    #[arg(long)]
    pub out: PathBuf,
}

/// `keyraft key` commands.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Rewrites key files of an earlier keyraft (64 hex digits, no header) in the typed
    /// formats, keeping each key. A file named `*.pub` becomes a public key file, any other a
    /// secret key file; files already typed are left alone.
    Migrate(KeyMigrateArgs),
}

/// Options of `keyraft key migrate`.
#[derive(Debug, clap::Args)]
pub struct KeyMigrateArgs {
    /// The key files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// A signer's secret key file; `option` names the option that gave it, for the messages.
pub(super) fn load_key(path: &std::path::Path, option: &str) -> Result<SigningKey, Box<dyn std::error::Error>> {
    let read = key_file::read_secret(path, option)?;
    if read.legacy {
        tracing::warn!("{}", key_file::legacy_warning(path, option));
    }
    Ok(SigningKey::from_bytes(&read.key))
}

/// `keyraft keygen`.
pub fn keygen(args: &KeygenArgs, out: &mut dyn Write) -> CmdResult {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let public = public_key(&key);
    let pub_path = key_file::public_path_for(&args.out);
    // Neither file is overwritten; a secret whose public file could not be written is removed
    // again, so a failed keygen leaves no half pair (and never a stale .pub beside an old key).
    key_file::write_secret(&args.out, &key.to_bytes())?;
    if let Err(e) = key_file::write_public(&pub_path, &public) {
        let _ = std::fs::remove_file(&args.out);
        return Err(e.into());
    }
    writeln!(out, "secret key written to {}", args.out.display())?;
    writeln!(out, "public key: {} (also in {})", hex::encode(public.as_bytes()), pub_path.display())?;
    Ok(())
}

/// `keyraft key migrate`: rewrites key files of an earlier keyraft in the typed formats.
pub fn key_migrate(args: &KeyMigrateArgs, out: &mut dyn Write) -> CmdResult {
    for path in &args.files {
        match key_file::migrate(path)? {
            key_file::Migrated::Rewritten(kind) => {
                writeln!(out, "{}: rewritten as a {} key file", path.display(), kind.name())?
            }
            key_file::Migrated::AlreadyTyped(kind) => {
                writeln!(out, "{}: already a {} key file, unchanged", path.display(), kind.name())?
            }
        }
    }
    Ok(())
}

//! Generates the Rust code for `proto/` with protox (a pure-Rust protobuf compiler), so a fresh
//! machine needs nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let files =
        [root.join("keyraft/v1/keyraft.proto"), root.join("keyraft/v1/log.proto"), root.join("keyraft/v1/peer.proto")];
    let fds = protox::compile(&files, [&root])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("keyraft_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}

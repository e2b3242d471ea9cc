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
    // Messages and clients with prost's codec; the servers apart, with ours (src/codec.rs),
    // referring to the same message types.
    tonic_prost_build::configure().build_server(false).compile_fds(fds.clone())?;
    let servers = out.join("servers");
    std::fs::create_dir_all(&servers)?;
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::codec::ServerCodec")
        .extern_path(".keyraft.v1", "crate::pb")
        .extern_path(".keyraft.peer.v1", "crate::peer")
        .out_dir(&servers)
        .compile_fds(fds)?;
    Ok(())
}

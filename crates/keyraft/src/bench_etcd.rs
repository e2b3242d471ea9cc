//! `keyraft bench-etcd`: the same load generator's update phase against an etcd cluster, for
//! the side-by-side comparison of `scripts/compare-etcd.sh` (docs/benchmarks.md).
//!
//! Each client task puts fresh keys (`--puts` in all) of `--value-bytes` random bytes, the
//! size of a keyraft update, through etcd's gRPC `KV.Put` on plaintext HTTP/2, spread over
//! `--endpoint`s as `keyraft bench` spreads updates over replicas. A put counts when etcd
//! answers it: committed by a Raft majority and applied, as a keyraft update counts when its
//! replica answers it applied. The messages are etcd's own (`etcdserverpb.PutRequest`, fields
//! 1 and 2), declared here so that the bench needs no etcd protocol files.

use crate::bench::{drive, report};
use std::io::Write;
use std::sync::Arc;

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// etcd's `PutRequest`: the fields a plain put sets.
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// etcd's `PutResponse`, read for its success only (the header is skipped).
#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

/// Options of `keyraft bench-etcd`.
#[derive(Debug, clap::Args)]
pub struct BenchEtcdArgs {
    /// An etcd member's client address, `host:port` (repeat for each member).
    #[arg(long = "endpoint", required = true)]
    pub endpoints: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Puts in all, each of a fresh key.
    #[arg(long, default_value_t = 10_000)]
    pub puts: usize,
    /// Bytes per value (`keyraft bench` prints the size of its updates).
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
}

/// `keyraft bench-etcd`.
pub fn run(args: &BenchEtcdArgs, out: &mut dyn Write) -> CmdResult {
    if args.clients == 0 || args.puts == 0 {
        return Err("bench-etcd needs at least one client and at least one put".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        // As `keyraft bench`: a few HTTP/2 connections per endpoint.
        let mut channels = Vec::new();
        for _ in 0..4 {
            for e in &args.endpoints {
                let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{e}"))?.tcp_nodelay(true);
                channels.push(tonic::client::Grpc::new(endpoint.connect_lazy()));
            }
        }
        let channels = Arc::new(channels);
        let run_id: u32 = rand::random();
        let value: Arc<Vec<u8>> = Arc::new((0..args.value_bytes).map(|_| rand::random::<u8>()).collect());
        writeln!(
            out,
            "bench-etcd: {} clients, {} endpoints, {} puts of {} bytes",
            args.clients,
            args.endpoints.len(),
            args.puts,
            args.value_bytes
        )?;
        let (lat, errors, elapsed) = drive(args.clients, args.puts, move |_c, i| {
            let mut grpc = channels[i % channels.len()].clone();
            let request = PutRequest { key: format!("bench-{run_id:08x}-{i}").into_bytes(), value: (*value).clone() };
            async move {
                grpc.ready().await.map_err(|e| format!("etcd put: the connection is not ready: {e}"))?;
                let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
                let codec = tonic_prost::ProstCodec::<PutRequest, PutResponse>::default();
                grpc.unary(tonic::Request::new(request), path, codec)
                    .await
                    .map_err(|s| format!("etcd put: {} ({:?})", s.message(), s.code()))?;
                Ok(())
            }
        })
        .await;
        report(out, "puts (committed)", lat.len(), errors, elapsed, lat)?;
        Ok(())
    })
}

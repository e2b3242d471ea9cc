//! `keyraft health`: asks a replica's metrics listener whether it is ready (or alive), for
//! container health checks, where an image built `FROM scratch` has no shell and no curl.

use std::io::Write;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long the probe may take, in milliseconds.
pub const HEALTH_TIMEOUT_MS: u64 = 5_000;
/// The most of an answer read, in bytes (a status line and a reason).
const ANSWER_BYTES_MAX: u64 = 4_096;

/// Options of `keyraft health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The replica's metrics listener (host:port, `metrics_listen`).
    #[arg(long)]
    pub addr: String,
    /// Ask whether it is alive (`/healthz`) rather than ready to serve (`/readyz`).
    #[arg(long)]
    pub live: bool,
}

/// Runs `keyraft health`: prints the answer; an error unless the replica said 200.
pub fn run(args: &HealthArgs, out: &mut dyn Write) -> Result<(), Box<dyn std::error::Error>> {
    let path = if args.live { "/healthz" } else { "/readyz" };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let answer = runtime.block_on(async {
        tokio::time::timeout(Duration::from_millis(HEALTH_TIMEOUT_MS), get(&args.addr, path)).await
    });
    let (status, body) = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(format!("{}{path}: {e}", args.addr).into()),
        Err(_) => return Err(format!("{}{path}: no answer within {HEALTH_TIMEOUT_MS} ms", args.addr).into()),
    };
    if status == 200 {
        writeln!(out, "{}{path}: {}", args.addr, body.trim())?;
        return Ok(());
    }
    Err(format!("{}{path}: {status} {}", args.addr, body.trim()).into())
}

/// A plain HTTP/1.1 GET: the status code and the body.
async fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut answer = Vec::new();
    tcp.take(ANSWER_BYTES_MAX).read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an HTTP answer: {text:?}"));
    let status_line = text.lines().next().ok_or_else(bad)?;
    let status = status_line.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}

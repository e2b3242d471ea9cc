//! A TCP proxy that can turn into a black hole: it relays bytes both ways until frozen, then
//! holds every connection open and forwards nothing, as a peer that vanished from the network
//! (a cut cable, `docker network disconnect`) looks to the other side: no data, no reset.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A proxy on loopback in front of one address.
pub struct BlackHole {
    /// Where clients connect.
    pub addr: SocketAddr,
    frozen: Arc<AtomicBool>,
}

impl BlackHole {
    /// Starts relaying to `target` on `runtime`.
    pub fn start(runtime: &tokio::runtime::Runtime, target: SocketAddr) -> BlackHole {
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let f = f.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(relay(cr, sw, f.clone()), relay(sr, cw, f));
                });
            }
        });
        BlackHole { addr, frozen }
    }

    /// From now on nothing passes, and nothing is closed.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            // Hold both halves open forever: the sockets stay connected and silent.
            let _keep = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

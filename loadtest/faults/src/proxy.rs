//! Two gateways behind one address, as a Kubernetes Service puts them: each
//! new connection goes to the next gateway in turn, or to the other one when
//! that gateway refuses the connection (killed, not yet restarted).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use triggers_core::CancellationToken;

/// Listens on `127.0.0.1:port` and forwards to `backends` until `shutdown`.
pub async fn start(port: u16, backends: Vec<u16>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let backends = Arc::new(backends);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((mut inbound, _)) = accepted else {
                continue;
            };
            let (next, backends) = (next.clone(), backends.clone());
            tokio::spawn(async move {
                let first = next.fetch_add(1, Ordering::Relaxed);
                for i in 0..backends.len() {
                    let port = backends[(first + i) % backends.len()];
                    let connect = TcpStream::connect(("127.0.0.1", port));
                    if let Ok(Ok(mut outbound)) = tokio::time::timeout(Duration::from_millis(500), connect).await {
                        let _ = outbound.set_nodelay(true);
                        let _ = inbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
                // No gateway took it: the client sees the connection close.
            });
        }
    });
    Ok(())
}

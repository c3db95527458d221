//! The accept loop: hands every accepted connection to a callback and keeps
//! going whatever `accept` says.

use std::future::Future;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

// Linux errno values that mean "out of resources, try again later".
const ENOMEM: i32 = 12;
const ENFILE: i32 = 23;
const EMFILE: i32 = 24;
const ENOBUFS: i32 = 105;

/// Accepts connections until `stop` completes, passing each to `on_accept`.
///
/// Accept errors (out of file descriptors, a connection aborted before it
/// was taken) never end the loop: they are logged and, for resource
/// exhaustion, followed by a short pause so the loop does not spin.
pub async fn accept_loop<F, S>(listener: TcpListener, mut on_accept: F, stop: S)
where
    F: FnMut(TcpStream),
    S: Future<Output = ()>,
{
    tokio::pin!(stop);
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            res = listener.accept() => match res {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(5);
                    on_accept(stream);
                }
                Err(e) => {
                    let exhausted = matches!(e.raw_os_error(), Some(ENFILE | EMFILE | ENOBUFS | ENOMEM));
                    log::warn!("accept failed: {e}");
                    if exhausted {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
        }
    }
}

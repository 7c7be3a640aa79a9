//! What every mock server shares: the accept loop, and the WebSocket handshake (accept within
//! a deadline, refuse with a status and a reason). Each mock keeps its own handshake callback
//! (which paths it serves, which attempts its faults refuse); this is the part around it.

use std::future::Future;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{Callback, ErrorResponse};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::WebSocketStream;

/// A client that opens TCP and never finishes the handshake does not hold a task forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A handshake refusal: `status` with `reason` as its body.
pub fn refusal(status: StatusCode, reason: String) -> ErrorResponse {
    let mut err = ErrorResponse::new(Some(reason));
    *err.status_mut() = status;
    err
}

/// Accepts connections until the task is aborted, each served by a task of its own (reaped as
/// they finish, so the set stays as small as the open connections). A failed accept (e.g. too
/// many open files) is logged with `server`'s name and retried after a short pause.
pub async fn serve_each<F>(listener: TcpListener, server: &str, mut serve: impl FnMut(TcpStream) -> F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, _peer)) => {
                connections.spawn(serve(stream));
            }
            Err(e) => {
                eprintln!("{server}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs the server side of the handshake with `callback`; `None` (and a line on stderr naming
/// `mock`) when it was refused, failed or timed out.
pub async fn websocket<C: Callback + Unpin>(stream: TcpStream, mock: &str, callback: C) -> Option<WebSocketStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio_tungstenite::accept_hdr_async(stream, callback)).await {
        Ok(Ok(ws)) => Some(ws),
        Ok(Err(e)) => {
            eprintln!("{mock}: handshake refused or failed: {e}");
            None
        }
        Err(_) => {
            eprintln!("{mock}: handshake timed out");
            None
        }
    }
}

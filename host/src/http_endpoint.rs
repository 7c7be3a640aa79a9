//! The HTTP endpoint for Prometheus and health probes: `GET /metrics` and `GET /health` on
//! `service.metrics_addr`.
//!
//! A minimal HTTP/1.1 responder on a tokio `TcpListener` rather than a hyper server: two
//! read-only routes, each request is one small GET head and gets one answer with
//! `Content-Length` and `Connection: close` (Prometheus, curl and Kubernetes probes all accept
//! that), so there is no body parsing, keep-alive, chunking or upgrade to get right, and no
//! new dependency. Every client is bounded: head size, time, and how many are served at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::status::{SharedRegistry, StatsRegistry};
use crate::{health, metrics};

/// A request head larger than this is refused: a scraper's GET is a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A client gets this long to send its request and take the answer; a stuck client then
/// frees its slot.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients served at once (a scraper or two, a probe, a curl); more wait in the backlog.
const MAX_CLIENTS: usize = 16;
/// Pause after a failed accept (out of file descriptors, say), so the loop cannot spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Binds the endpoint; done before anything starts, so a taken port fails the start.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, registry: SharedRegistry) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            // The set of feeds and sinks as of this request (a reload may have changed it).
            let registry = registry.snapshot();
            if tokio::time::timeout(CLIENT_TIMEOUT, handle(stream, &registry)).await.is_err() {
                debug!(%peer, "metrics endpoint: client too slow; dropped");
            }
            drop(permit);
        });
    }
}

/// An answer: status, content type, body.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn text(status: u16, body: &str) -> Reply {
        Reply { status, content_type: "text/plain; charset=utf-8", body: format!("{body}\n") }
    }
}

async fn handle(mut stream: TcpStream, registry: &StatsRegistry) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_REQUEST_HEAD {
            break false;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    };
    let (reply, head_only) = if complete {
        route(&head, registry)
    } else if head.len() > MAX_REQUEST_HEAD {
        (Reply::text(431, "request head too large"), false)
    } else {
        return; // the client went away
    };
    let reason = match reply.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    if reply.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&reply.body);
    }
    let _ = stream.write_all(out.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Picks the answer for a request head; the bool says "HEAD: no body".
fn route(head: &[u8], registry: &StatsRegistry) -> (Reply, bool) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return (Reply::text(400, "bad request line"), false);
    };
    if !version.starts_with("HTTP/1.") {
        return (Reply::text(400, "HTTP/1.x only"), false);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return (Reply::text(405, "GET or HEAD only"), false),
    };
    let path = target.split('?').next().unwrap_or(target);
    let now = ds_api::clock::now_ns();
    let reply = match path {
        "/metrics" => Reply { status: 200, content_type: metrics::CONTENT_TYPE, body: metrics::render(registry, now) },
        "/health" => {
            let h = health::evaluate(registry, now);
            Reply { status: if h.healthy { 200 } else { 503 }, content_type: "application/json", body: format!("{}\n", h.body) }
        }
        "/" => Reply::text(200, "data-storage: /metrics (Prometheus), /health"),
        _ => Reply::text(404, "not found: try /metrics or /health"),
    };
    (reply, head_only)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn routes_answer_with_length_and_close() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, SharedRegistry::default()));

        let m = ask(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(m.contains("Content-Type: text/plain; version=0.0.4"), "{m}");
        let (head, body) = m.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{m}");
        assert!(body.contains("# TYPE data_storage_feed_frames_total counter"));

        let h = ask(addr, b"GET /health?verbose HTTP/1.0\r\n\r\n").await;
        assert!(h.starts_with("HTTP/1.1 200 OK\r\n") && h.contains("\"status\":\"ok\""), "no feeds, no sinks: {h}");
        let head_only = ask(addr, b"HEAD /health HTTP/1.1\r\n\r\n").await;
        assert!(head_only.ends_with("\r\n\r\n"), "HEAD has no body: {head_only}");
        assert!(ask(addr, b"GET /nope HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        let post = ask(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"), "{post}");
        // An endless head is cut off (the answer may be lost to a reset: the server closes
        // with unread bytes), never waited on.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST_HEAD * 2)).as_bytes()).await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "answered or closed at once");
        assert!(out.is_empty() || out.starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&out));
        server.abort();
    }
}

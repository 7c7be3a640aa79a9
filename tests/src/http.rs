//! A minimal scripted HTTP/1.1 server on 127.0.0.1, for REST mocks and fake sinks.
//!
//! Hand-written on a tokio `TcpListener` instead of a server framework so that the test stack
//! adds no dependency and every byte on the wire is under the test's control: a handler can
//! answer any status and header (Retry-After, partial-write 400s), answer late, or never answer
//! at all ([`Response::hang`]) to exercise client timeouts. It supports what the service's
//! clients send: keep-alive (several requests per connection), `Content-Length` and chunked
//! bodies, `Expect: 100-continue`, and gzip request bodies (see [`Request::body_decoded`]).
//!
//! Every request is recorded before the handler sees it ([`HttpServer::requests`]). Dropping
//! the [`HttpServer`] aborts the accept loop and, with it, every connection task.

use std::io::Read as _;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Largest request head (request line + headers) accepted; a bigger one closes the connection.
const MAX_HEAD_BYTES: u64 = 64 * 1024;
/// Largest request body accepted (InfluxDB batches in tests stay far below this).
const MAX_BODY_BYTES: u64 = 256 * 1024 * 1024;
/// Poll period of the `wait_for_*` helpers: short enough not to slow tests down.
const POLL: Duration = Duration::from_millis(10);

/// One request as received (body still encoded; see [`Request::body_decoded`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target as sent, query included (`/api/v3/depth?symbol=BTCUSDT&limit=1000`).
    pub path: String,
    /// The query parameters in order, url-decoded (`+` is a space).
    pub query: Vec<(String, String)>,
    /// Header names and values in order, as sent.
    pub headers: Vec<(String, String)>,
    /// The body bytes as sent on the wire (chunked framing removed, compression kept).
    pub body: Vec<u8>,
}

impl Request {
    /// The path without its query string.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }

    /// The first value of query parameter `name` (exact, case-sensitive name).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of header `name` (case-insensitive, as HTTP requires).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the body is sent with `Content-Encoding: gzip`.
    pub fn is_gzip(&self) -> bool {
        self.header("content-encoding")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"))
    }

    /// The body with its `Content-Encoding: gzip` undone (verbatim when not gzip).
    pub fn try_body_decoded(&self) -> std::io::Result<Vec<u8>> {
        if !self.is_gzip() {
            return Ok(self.body.clone());
        }
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(self.body.as_slice()).read_to_end(&mut out)?;
        Ok(out)
    }

    /// The body with its `Content-Encoding: gzip` undone (verbatim when not gzip).
    ///
    /// Panics on a corrupt gzip body: for a test that is the finding. Use
    /// [`Request::try_body_decoded`] where that must not panic (inside a handler, a panic is
    /// caught and answered with a 500).
    pub fn body_decoded(&self) -> Vec<u8> {
        self.try_body_decoded().unwrap_or_else(|e| {
            panic!(
                "{} {}: corrupt gzip request body: {e}",
                self.method, self.path
            )
        })
    }

    /// [`Request::body_decoded`] as text (invalid UTF-8 replaced).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body_decoded()).into_owned()
    }
}

/// When the server sends a [`Response`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timing {
    Now,
    After(Duration),
    Never,
}

/// What the handler answers. Built with [`Response::json`], [`Response::text`],
/// [`Response::empty`], then [`Response::with_header`] / [`Response::with_delay`]; or
/// [`Response::hang`] for a request that is never answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Extra headers. `Content-Length` is added unless present.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
    timing: Timing,
}

impl Response {
    /// A response with no body and no headers.
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            timing: Timing::Now,
        }
    }

    /// A JSON body with `Content-Type: application/json;charset=UTF-8` (what Binance sends).
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self {
            body: body.into().into_bytes(),
            ..Self::empty(status)
        }
        .with_header("Content-Type", "application/json;charset=UTF-8")
    }

    /// A plain-text body with `Content-Type: text/plain; charset=utf-8`.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            body: body.into().into_bytes(),
            ..Self::empty(status)
        }
        .with_header("Content-Type", "text/plain; charset=utf-8")
    }

    /// Never answers: the connection stays open, silent, until the server is dropped. For
    /// client timeout tests.
    pub fn hang() -> Self {
        Self {
            timing: Timing::Never,
            ..Self::empty(0)
        }
    }

    /// Adds a header (e.g. `Retry-After`).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sends the response only after `delay`, as a slow server would (the connection task
    /// sleeps; other connections are served meanwhile).
    pub fn with_delay(mut self, delay: Duration) -> Self {
        if self.timing != Timing::Never {
            self.timing = Timing::After(delay);
        }
        self
    }

    /// Whether this is [`Response::hang`].
    pub fn is_hang(&self) -> bool {
        self.timing == Timing::Never
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync + 'static;

/// A scripted HTTP/1.1 server on `127.0.0.1:<ephemeral port>`; stops when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    accept_task: JoinHandle<()>,
}

impl HttpServer {
    /// Binds 127.0.0.1:0 and serves every request with `handler`.
    ///
    /// The handler runs on the connection's task; it must not block for long (use
    /// [`Response::with_delay`] to answer late). A panicking handler is answered with a 500
    /// whose body is the panic message, and the panic is printed.
    pub async fn start(
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> HttpServer {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind 127.0.0.1:0 for the test HTTP server");
        let addr = listener
            .local_addr()
            .expect("local address of the test HTTP server");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let accept_task = tokio::spawn(accept_loop(listener, handler, Arc::clone(&requests)));
        HttpServer {
            addr,
            requests,
            accept_task,
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order (recorded before the handler ran).
    pub fn requests(&self) -> Vec<Request> {
        crate::lock(&self.requests).clone()
    }

    /// How many requests were received so far.
    pub fn request_count(&self) -> usize {
        crate::lock(&self.requests).len()
    }

    /// Waits until at least `n` requests were received or `timeout` passed; returns the
    /// requests received by then (the caller asserts on their number).
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.request_count() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        self.requests()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        // Dropping the accept future drops its JoinSet, which aborts every connection task.
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    handler: Arc<Handler>,
    requests: Arc<Mutex<Vec<Request>>>,
) {
    crate::accept::serve_each(listener, "ds-tests http", |stream| {
        serve_connection(stream, Arc::clone(&handler), Arc::clone(&requests))
    })
    .await;
}

/// Serves requests on one connection until the peer closes it, asks to close, or sends
/// something unparsable. Errors are logged and end only this connection.
async fn serve_connection(
    stream: TcpStream,
    handler: Arc<Handler>,
    requests: Arc<Mutex<Vec<Request>>>,
) {
    let mut stream = BufReader::new(stream);
    loop {
        let (request, keep_alive) = match read_request(&mut stream).await {
            Ok(Some(read)) => read,
            Ok(None) => return, // clean EOF between requests
            Err(e) => {
                eprintln!("ds-tests http: dropping connection: {e}");
                return;
            }
        };
        crate::lock(&requests).push(request.clone());

        let response = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(&request))) {
            Ok(response) => response,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "handler panicked".to_owned());
                eprintln!(
                    "ds-tests http: handler panicked on {} {}: {msg}",
                    request.method, request.path
                );
                Response::text(500, format!("test handler panicked: {msg}"))
            }
        };
        match response.timing {
            Timing::Now => {}
            Timing::After(delay) => tokio::time::sleep(delay).await,
            // Ends when the server is dropped (this task is aborted).
            Timing::Never => std::future::pending::<()>().await,
        }
        let head_only = request.method.eq_ignore_ascii_case("HEAD");
        if let Err(e) = write_response(stream.get_mut(), &response, keep_alive, head_only).await {
            eprintln!("ds-tests http: cannot write response: {e}");
            return;
        }
        if !keep_alive {
            return;
        }
    }
}

/// Whether the connection stays open after answering: HTTP/1.1 keeps alive unless the client
/// sends `Connection: close`; HTTP/1.0 closes unless it sends `Connection: keep-alive`.
fn wants_keep_alive(request: &Request, http_1_0: bool) -> bool {
    let connection = request.header("connection").unwrap_or_default();
    let has = |token: &str| {
        connection
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if http_1_0 {
        has("keep-alive")
    } else {
        !has("close")
    }
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// Reads one line (up to `limit` bytes) without its CRLF; `None` on EOF before any byte.
async fn read_line(
    stream: &mut BufReader<TcpStream>,
    limit: u64,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = (&mut *stream)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(bad("line too long or connection closed mid-line"));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| bad("request head is not UTF-8"))
}

/// Reads one request and whether to keep the connection open after it; `Ok(None)` when the
/// peer closed the connection before sending one.
pub(crate) async fn read_request(
    stream: &mut BufReader<TcpStream>,
) -> std::io::Result<Option<(Request, bool)>> {
    let mut budget = MAX_HEAD_BYTES;
    let request_line = loop {
        // Tolerate stray CRLFs between requests (RFC 9112 section 2.2).
        match read_line(stream, budget).await? {
            None => return Ok(None),
            Some(line) if line.is_empty() => budget = budget.saturating_sub(2),
            Some(line) => break line,
        }
        if budget == 0 {
            return Err(bad("request head too large"));
        }
    };
    budget = budget.saturating_sub(request_line.len() as u64 + 2);

    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(format!("malformed request line {request_line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("unsupported version {version:?}")));
    }

    let mut headers = Vec::new();
    loop {
        if budget == 0 {
            return Err(bad("request head too large"));
        }
        let line = read_line(stream, budget)
            .await?
            .ok_or_else(|| bad("connection closed inside the request head"))?;
        budget = budget.saturating_sub(line.len() as u64 + 2);
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("malformed header line {line:?}")))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }

    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: parse_query(path.split_once('?').map(|(_, q)| q).unwrap_or_default()),
        headers,
        body: Vec::new(),
    };

    if request
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        stream
            .get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await?;
    }

    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        request.body = read_chunked_body(stream).await?;
    } else if let Some(len) = request.header("content-length") {
        let len: u64 = len
            .parse()
            .map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
        if len > MAX_BODY_BYTES {
            return Err(bad(format!("body of {len} bytes is too large")));
        }
        let mut body = vec![0; len as usize];
        stream.read_exact(&mut body).await?;
        request.body = body;
    }
    let keep_alive = wants_keep_alive(&request, version == "HTTP/1.0");
    Ok(Some((request, keep_alive)))
}

async fn read_chunked_body(stream: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size_line = read_line(stream, 1024)
            .await?
            .ok_or_else(|| bad("connection closed inside a chunked body"))?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size_hex, 16)
            .map_err(|_| bad(format!("bad chunk size {size_line:?}")))?;
        if body.len() as u64 + size > MAX_BODY_BYTES {
            return Err(bad("chunked body too large"));
        }
        if size == 0 {
            // Trailer section: lines until an empty one, bounded by the head budget.
            let mut budget = MAX_HEAD_BYTES;
            loop {
                let line = read_line(stream, budget)
                    .await?
                    .ok_or_else(|| bad("connection closed inside chunk trailers"))?;
                if line.is_empty() {
                    return Ok(body);
                }
                budget = budget.saturating_sub(line.len() as u64 + 2);
                if budget == 0 {
                    return Err(bad("chunk trailers too large"));
                }
            }
        }
        let start = body.len();
        body.resize(start + size as usize, 0);
        stream.read_exact(&mut body[start..]).await?;
        let mut crlf = [0u8; 2];
        stream.read_exact(&mut crlf).await?;
        if &crlf != b"\r\n" {
            return Err(bad("chunk not followed by CRLF"));
        }
    }
}

pub(crate) async fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    keep_alive: bool,
    head_only: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason_phrase(response.status)
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if response.header("content-length").is_none() {
        head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    }
    if !keep_alive && response.header("connection").is_none() {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&response.body);
    }
    stream.write_all(&bytes).await?;
    stream.flush().await
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        418 => "I'm a teapot",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Splits and url-decodes a query string (`a=1&b=x%20y`), keeping order and repeats.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

/// Decodes `application/x-www-form-urlencoded` text: `%XX` escapes and `+` as space. An
/// invalid escape is kept as written; invalid UTF-8 is replaced.
pub fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).expect("gzip into memory");
        enc.finish().expect("gzip into memory")
    }

    #[test]
    fn url_decoding() {
        let cases = [
            ("a%20b", "a b"),
            ("a+b", "a b"),
            ("%22x%22", "\"x\""),
            ("100%", "100%"),
            ("%zz", "%zz"),
            ("%4", "%4"),
            ("caf%C3%A9", "café"),
        ];
        for (i, (input, expected)) in cases.iter().enumerate() {
            assert_eq!(url_decode(input), *expected, "case {i}: {input}");
        }
        assert_eq!(
            parse_query("symbol=BTCUSDT&limit=1000&q=SELECT+*&flag"),
            vec![
                ("symbol".into(), "BTCUSDT".into()),
                ("limit".into(), "1000".into()),
                ("q".into(), "SELECT *".into()),
                ("flag".into(), String::new()),
            ]
        );
    }

    #[tokio::test]
    async fn serves_records_and_keeps_alive() {
        let server = HttpServer::start(|req| match req.path_only() {
            "/echo" => Response::text(200, req.body_text()).with_header("X-Seen", "yes"),
            "/json" => Response::json(201, r#"{"ok":true}"#),
            _ => Response::empty(404),
        })
        .await;
        assert!(server.url().starts_with("http://127.0.0.1:"));

        let client = reqwest::Client::new();
        let plain = client
            .get(format!("{}/json?x=1%202", server.url()))
            .send()
            .await
            .expect("GET /json");
        assert_eq!(plain.status().as_u16(), 201);
        assert_eq!(plain.text().await.expect("body"), r#"{"ok":true}"#);

        let compressed = gzip(b"cpu value=1 1\ncpu value=2 2\n");
        let echoed = client
            .post(format!("{}/echo?db=x", server.url()))
            .header("Content-Encoding", "gzip")
            .body(compressed.clone())
            .send()
            .await
            .expect("POST /echo");
        assert_eq!(echoed.status().as_u16(), 200);
        assert_eq!(echoed.headers()["x-seen"], "yes");
        assert_eq!(
            echoed.text().await.expect("body"),
            "cpu value=1 1\ncpu value=2 2\n"
        );

        let missing = client
            .get(format!("{}/nope", server.url()))
            .send()
            .await
            .expect("GET /nope");
        assert_eq!(missing.status().as_u16(), 404);

        let reqs = server.requests();
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[0].method, "GET");
        assert_eq!(reqs[0].path, "/json?x=1%202");
        assert_eq!(reqs[0].query_param("x"), Some("1 2"));
        assert_eq!(reqs[1].body, compressed);
        assert!(reqs[1].is_gzip());
        assert_eq!(reqs[1].header("CONTENT-ENCODING"), Some("gzip"));
        assert_eq!(reqs[1].query_param("db"), Some("x"));
    }

    /// Several requests on one raw TCP connection, one of them chunked, prove keep-alive and
    /// the hand-written framing without relying on a client's pooling decisions.
    #[tokio::test]
    async fn raw_keep_alive_and_chunked() {
        let server = HttpServer::start(|req| Response::text(200, req.body_text())).await;
        let mut conn = TcpStream::connect(server.addr()).await.expect("connect");
        conn.write_all(
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
              POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n\
              GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write");
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut answer))
            .await
            .expect("server closes after Connection: close")
            .expect("read");
        assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 3, "{answer}");
        assert!(answer.contains("\r\n\r\nhello"), "{answer}");
        assert!(answer.contains("\r\n\r\nabcde"), "{answer}");
        assert!(answer.contains("Connection: close"), "{answer}");
        let paths: Vec<_> = server.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/a", "/b", "/c"]);
    }

    #[tokio::test]
    async fn hang_times_out_the_client_and_panics_become_500() {
        let server = HttpServer::start(|req| match req.path_only() {
            "/hang" => Response::hang(),
            "/slow" => Response::empty(204).with_delay(Duration::from_millis(100)),
            _ => panic!("boom"),
        })
        .await;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let err = client
            .get(format!("{}/hang", server.url()))
            .send()
            .await
            .expect_err("a hung request must time out");
        assert!(err.is_timeout(), "{err}");

        let slow = client
            .get(format!("{}/slow", server.url()))
            .send()
            .await
            .expect("slow answers within the timeout");
        assert_eq!(slow.status().as_u16(), 204);

        let panicked = client
            .get(format!("{}/boom", server.url()))
            .send()
            .await
            .expect("a panicking handler still answers");
        assert_eq!(panicked.status().as_u16(), 500);
        assert!(panicked.text().await.expect("body").contains("boom"));
        assert_eq!(
            server
                .wait_for_requests(3, Duration::from_secs(1))
                .await
                .len(),
            3
        );
    }

    #[tokio::test]
    async fn drop_stops_the_server() {
        let server = HttpServer::start(|_| Response::empty(200)).await;
        let addr = server.addr();
        drop(server);
        // The listener is closed once the aborted accept task is dropped by the runtime.
        let mut refused = false;
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        assert!(refused, "server still accepting after drop");
    }
}

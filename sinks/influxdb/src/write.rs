//! One HTTP write request: the body (optionally gzip), authentication, the retrying client.

use std::time::Duration;

use bytes::Bytes;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, LOCATION};
use reqwest::{StatusCode, Url};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

use crate::config::{Auth, InfluxConfig};
use crate::gzip::GzipBody;
use crate::retry::{self, RetryAfterMiddleware};

/// The final answer to a write request, after the middleware's retries.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    /// `Location` of a redirect, which is not followed.
    pub location: Option<String>,
    pub body: String,
}

/// Posts line protocol to the configured write endpoint.
pub struct Writer {
    client: ClientWithMiddleware,
    /// The same client without the retry middleware, for the one-shot probes of
    /// `check --online` ([`crate::probe`]), which must answer at once, not after retries.
    pub(crate) plain: reqwest::Client,
    pub(crate) url: Url,
    pub(crate) auth: Auth,
    /// `Token <token>`, built once and marked sensitive so no HTTP-level debug output shows it
    /// (reqwest marks its basic-auth header the same way).
    pub(crate) token_header: Option<HeaderValue>,
    gzip: bool,
}

impl Writer {
    /// Builds the client. No connection is made here (`build` runs offline).
    pub fn new(cfg: &InfluxConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("data-storage/", env!("CARGO_PKG_VERSION")))
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            // A redirected POST would turn into a GET (or lose its body); a redirect means
            // the url is wrong, and the refusal names where the server points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let client = ClientBuilder::new(http.clone()).with(RetryAfterMiddleware::new(cfg.retry)).build();
        let token_header = match &cfg.auth {
            Auth::Token(t) => {
                let mut v = HeaderValue::from_str(&format!("Token {}", t.expose()))
                    .map_err(|_| "the token contains characters not allowed in an HTTP header".to_string())?;
                v.set_sensitive(true);
                Some(v)
            }
            _ => None,
        };
        Ok(Writer { client, plain: http, url: cfg.write_url.clone(), auth: cfg.auth.clone(), token_header, gzip: cfg.gzip })
    }

    /// The write URL; it carries no secret, so it may be logged.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Sends `lines` (one point each, without their newlines) and returns the final status and
    /// body. `Err` only when no response came back at all, after the middleware's retries.
    pub async fn post(&self, lines: &[&[u8]]) -> Result<Reply, reqwest_middleware::Error> {
        self.send(body(lines, self.gzip)).await
    }

    /// [`Self::post`] of a whole batch as the buffer made it (newline-terminated lines): its
    /// text is the body as it is, with no pass over its lines, and without gzip not even a
    /// copy (the buffer is shared).
    pub async fn post_text(&self, text: &Bytes) -> Result<Reply, reqwest_middleware::Error> {
        let body = if self.gzip { Bytes::from(gzip_text(text)) } else { text.clone() };
        self.send(body).await
    }

    async fn send(&self, body: impl Into<reqwest::Body>) -> Result<Reply, reqwest_middleware::Error> {
        let mut req = self.client.post(self.url.clone()).header(CONTENT_TYPE, "text/plain; charset=utf-8");
        if let Auth::Basic { username, password } = &self.auth {
            req = req.basic_auth(username, Some(password.expose()));
        }
        if let Some(token) = &self.token_header {
            req = req.header(AUTHORIZATION, token.clone());
        }
        if self.gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
        }
        let resp = req.body(body).send().await?;
        let status = resp.status();
        let retry_after = retry::retry_after(resp.headers());
        let location = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        // A failed body read still leaves the status, which is what decides.
        let body = if status.is_success() { String::new() } else { resp.text().await.unwrap_or_default() };
        Ok(Reply { status, retry_after, location, body })
    }
}

/// The request body: the lines, newline-terminated, gzip-compressed when asked. Compression
/// level "fast": line protocol is repetitive (same series keys over and over), so even the
/// fastest level shrinks it several times, at a fraction of the default level's CPU.
///
/// The lines go to the encoder in 64 KiB chunks, not one `write` per line and newline: each
/// call has a fixed cost in the encoder (with flate2's miniz_oxide backend it zero-filled the
/// encoder's whole 32 KiB output buffer every time, a quarter of data-storage's CPU in a
/// `ds-load` profile at two calls per point). Chunks, rather than the whole body joined first,
/// keep the temporary buffer small. The encoder's state is reused ([`GzipBody`]).
pub fn body(lines: &[&[u8]], gzip: bool) -> Vec<u8> {
    const CHUNK: usize = 64 * 1024;
    let len: usize = lines.iter().map(|l| l.len() + 1).sum();
    if !gzip {
        let mut out = Vec::with_capacity(len);
        for l in lines {
            out.extend_from_slice(l);
            out.push(b'\n');
        }
        return out;
    }
    let mut gz = GzipBody::new(len);
    let mut chunk = Vec::with_capacity(CHUNK.min(len));
    for l in lines {
        if !chunk.is_empty() && chunk.len() + l.len() + 1 > CHUNK {
            gz.write(&chunk);
            chunk.clear();
        }
        chunk.extend_from_slice(l);
        chunk.push(b'\n');
    }
    gz.write(&chunk);
    gz.finish()
}

/// [`body`] of text that is already newline-terminated lines, gzip-compressed in one pass of
/// the encoder straight over it (no chunk buffer needed, as nothing is joined). Uncompressed,
/// such text is the body as it is ([`Writer::post_text`]).
pub fn gzip_text(text: &[u8]) -> Vec<u8> {
    let mut gz = GzipBody::new(text.len());
    gz.write(text);
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn gzip_body_round_trips() {
        let lines: [&[u8]; 2] = [b"m x=1 1", b"m,t=a x=2 2"];
        assert_eq!(body(&lines, false), b"m x=1 1\nm,t=a x=2 2\n");
        let z = body(&lines, true);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&z[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"m x=1 1\nm,t=a x=2 2\n");
    }

    #[test]
    fn gzip_body_of_several_chunks_round_trips() {
        let text: Vec<String> = (0..20_000).map(|i| format!("book_delta,exchange=binance,symbol=S{} price=1.{i},size=2 {i}", i % 7)).collect();
        let lines: Vec<&[u8]> = text.iter().map(|l| l.as_bytes()).collect();
        let plain = body(&lines, false);
        assert_eq!(plain.len(), text.iter().map(|l| l.len() + 1).sum::<usize>());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body(&lines, true)[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, plain);
    }
}

//! `InfluxSink`: one write call, from a batch of line protocol to stored, quarantined, or
//! handed back to the buffer.
//!
//! Per request, by final status (after [`crate::retry`]'s in-call retries):
//!
//! | status                 | what happens                                                   |
//! |------------------------|----------------------------------------------------------------|
//! | 2xx                    | stored                                                         |
//! | 408, 429, 5xx, network | `DBError::Retryable` (with `Retry-After`): the buffer keeps it |
//! | 401, 403               | `DBError::Auth`: the buffer keeps it, nothing quarantined      |
//! | 413                    | split in halves, each written (at most [`MAX_SPLIT_DEPTH`] deep) |
//! | other (400, 404, 422)  | the rejected lines are quarantined, see below                  |
//!
//! A refusal that names its rejected lines ([`crate::rejected`]) quarantines those lines only,
//! and the remaining lines are sent again: InfluxDB 1.x stored them already (a `partial write`;
//! re-sending identical points is harmless, contract 4), but 1.x names only the first type
//! conflict and hides parse errors behind it, and 2.x rejects a whole request over one bad
//! line. Only a 2xx for the rest proves every line is stored or quarantined. After
//! [`MAX_ROUNDS`] such rounds, or when the refusal names no line, what is left is quarantined
//! whole, with the server's reason.
//!
//! A write that quarantined anything returns `DBError::Rejected`, so the buffer does not retry
//! a batch whose lines would be refused forever, and logs the count. If a later request of the
//! same call fails temporarily (`Retryable`, `Auth`), the buffer re-sends the whole batch, and
//! the refused lines are quarantined a second time: a duplicate in the file, harmless to replay,
//! where the alternative would be to remember lines across calls.

use async_trait::async_trait;
use bytes::Bytes;
use ds_api::{DBError, OnlineCheck, Sink};
use tracing::{info, warn};

use crate::config::InfluxConfig;
use crate::quarantine::Quarantine;
use crate::rejected;
use crate::retry::{classify, Verdict};
use crate::write::{Reply, Writer};

/// Halvings after a 413: at most 2^6 = 64 pieces (127 requests) per batch. A server that refuses
/// 1/64th of a default batch (~12 kB) is misconfigured; its pieces are quarantined, not sent
/// line by line.
pub const MAX_SPLIT_DEPTH: u32 = 6;
/// Quarantine-and-resend rounds after a refusal that names lines.
pub const MAX_ROUNDS: u32 = 4;
/// Longest server body quoted in an error.
const MAX_BODY_IN_ERROR: usize = 300;

/// The `influxdb` sink.
pub struct InfluxSink {
    name: String,
    writer: Writer,
    quarantine: Quarantine,
}

/// A part of the batch still to be written.
struct Piece<'a> {
    lines: Vec<&'a [u8]>,
    /// Halvings that produced it (413).
    depth: u32,
    /// Quarantine-and-resend rounds that produced it.
    round: u32,
}

impl InfluxSink {
    pub fn new(cfg: InfluxConfig) -> Result<Self, String> {
        Ok(InfluxSink { writer: Writer::new(&cfg)?, quarantine: Quarantine::new(&cfg.quarantine_dir, &cfg.name), name: cfg.name })
    }

    /// Points quarantined since start (also logged with every quarantine).
    pub fn points_quarantined(&self) -> u64 {
        self.quarantine.points()
    }
}

#[async_trait]
impl Sink for InfluxSink {
    async fn write(&mut self, lines: &[u8], points: usize) -> Result<(), DBError> {
        self.write_shared(&Bytes::copy_from_slice(lines), points).await
    }

    async fn write_shared(&mut self, lines: &Bytes, _points: usize) -> Result<(), DBError> {
        // The common case first: the batch as the buffer made it (newline-terminated lines),
        // posted as it is, with no pass over its lines. Finding the lines and joining them
        // again was 5% of data-storage's CPU at 1,000 symbols (`perf`); only a 413 or a refusal
        // needs them, to split the batch or to name the refused ones.
        let mut answered = None;
        if lines.ends_with(b"\n") {
            let reply = self.writer.post_text(lines).await.map_err(|e| self.unsent(&e))?;
            match classify(reply.status) {
                Verdict::Stored => return Ok(()),
                Verdict::Retry | Verdict::Auth => return Err(self.kept(&reply)),
                Verdict::TooLarge | Verdict::Refused => answered = Some(reply),
            }
        }
        let all = split_lines(lines);
        let total = all.len();
        // That reply answers for the whole batch as lines when the text was exactly these
        // lines (no blank line), so a refusal's line numbers are theirs; otherwise the lines
        // are sent again.
        if all.iter().map(|l| l.len() + 1).sum::<usize>() != lines.len() {
            answered = None;
        }
        let mut work = vec![Piece { lines: all, depth: 0, round: 0 }];
        let mut quarantined = 0usize;
        let mut reasons: Vec<String> = Vec::new();
        let mut file = None;

        while let Some(piece) = work.pop() {
            if piece.lines.is_empty() {
                continue;
            }
            let reply = match answered.take() {
                Some(reply) => reply,
                None => self.writer.post(&piece.lines).await.map_err(|e| self.unsent(&e))?,
            };
            let status = reply.status.as_u16();
            let short_body = || rejected::one_line(&reply.body, MAX_BODY_IN_ERROR);
            match classify(reply.status) {
                Verdict::Stored => {}
                Verdict::Retry | Verdict::Auth => return Err(self.kept(&reply)),
                Verdict::TooLarge if piece.lines.len() > 1 && piece.depth < MAX_SPLIT_DEPTH => {
                    let mut first = piece.lines;
                    let second = first.split_off(first.len() / 2);
                    info!(sink = %self.name, lines = first.len() + second.len(), depth = piece.depth + 1, "HTTP 413: writing the batch in two halves");
                    // A stack: push the second half first so the first half is written first.
                    work.push(Piece { lines: second, depth: piece.depth + 1, round: piece.round });
                    work.push(Piece { lines: first, depth: piece.depth + 1, round: piece.round });
                }
                Verdict::TooLarge => {
                    let reason = format!(
                        "request too large even as a piece of {} line(s) after {} halving(s); raise the server's body size limit: {}",
                        piece.lines.len(),
                        piece.depth,
                        short_body()
                    );
                    file = Some(self.quarantine.put(status, &reason, &piece.lines).await?);
                    quarantined += piece.lines.len();
                    reasons.push(format!("HTTP {status}: too large"));
                }
                Verdict::Refused => {
                    let refusal = rejected::identify(&reply.body, &piece.lines);
                    let message = match &reply.location {
                        Some(to) if reply.status.is_redirection() => format!("redirected to {to}; set `url` to the final address"),
                        _ => refusal.message.clone(),
                    };
                    if refusal.rejected.is_empty() || piece.round >= MAX_ROUNDS {
                        let note = if refusal.partial {
                            " (partial write: the server stored the lines it accepted; it did not say which it refused, so the whole request is here)"
                        } else {
                            ""
                        };
                        file = Some(self.quarantine.put(status, &format!("{message}{note}"), &piece.lines).await?);
                        quarantined += piece.lines.len();
                    } else {
                        let (bad, rest): (Vec<_>, Vec<_>) =
                            piece.lines.iter().enumerate().partition(|(i, _)| refusal.rejected.contains(i));
                        let bad: Vec<&[u8]> = bad.into_iter().map(|(_, l)| *l).collect();
                        file = Some(self.quarantine.put(status, &message, &bad).await?);
                        quarantined += bad.len();
                        if !rest.is_empty() {
                            warn!(sink = %self.name, rejected = bad.len(), resending = rest.len(), "refused lines quarantined; sending the other lines again to confirm they are stored");
                        }
                        work.push(Piece { lines: rest.into_iter().map(|(_, l)| *l).collect(), depth: piece.depth, round: piece.round + 1 });
                    }
                    reasons.push(format!("HTTP {status}: {message}"));
                }
            }
        }

        if quarantined == 0 {
            return Ok(());
        }
        reasons.dedup();
        let path = file.map(|p| p.display().to_string()).unwrap_or_default();
        let stored = match total - quarantined {
            0 => String::new(),
            n => format!(", the other {n} stored"),
        };
        Err(DBError::Rejected {
            reason: format!(
                "{quarantined} of {total} points quarantined to {path}{stored} ({} quarantined since start): {}",
                self.quarantine.points(),
                rejected::one_line(&reasons.join("; "), MAX_BODY_IN_ERROR)
            ),
            quarantined,
        })
    }

    async fn check_online(&mut self) -> OnlineCheck {
        crate::probe::probe(&self.writer).await
    }
}

impl InfluxSink {
    /// No response came back at all (after the middleware's retries): the buffer keeps the batch.
    fn unsent(&self, e: &reqwest_middleware::Error) -> DBError {
        DBError::Retryable { reason: format!("POST {}: {}", self.writer.url(), error_chain(e)), retry_after: None }
    }

    /// The error for a reply whose batch the buffer keeps: a temporary refusal (`Retry`) or
    /// refused credentials (`Auth`).
    fn kept(&self, reply: &Reply) -> DBError {
        let reason = format!("POST {}: HTTP {}: {}", self.writer.url(), reply.status.as_u16(), rejected::one_line(&reply.body, MAX_BODY_IN_ERROR));
        match classify(reply.status) {
            Verdict::Auth => DBError::Auth { reason },
            _ => DBError::Retryable { reason, retry_after: reply.retry_after },
        }
    }
}

/// An error with its causes: reqwest's top-level message ("error sending request") hides the
/// useful part ("connection refused").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// The non-empty lines of a batch. `memchr` finds the newlines with SIMD; the byte-at-a-time
/// `split` it replaces was 6% of data-storage's CPU in a `ds-load` profile (5,000 lines of
/// ~100 bytes per write).
fn split_lines(text: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(text.len() / 64 + 1);
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', text).chain(std::iter::once(text.len())) {
        if nl > start {
            out.push(&text[start..nl]);
        }
        start = nl + 1;
    }
    out
}

#[cfg(test)]
mod split_tests {
    use super::split_lines;

    #[test]
    fn split_lines_skips_empty_lines_and_keeps_a_last_unterminated_one() {
        let want: Vec<&[u8]> = vec![b"a x=1 1", b"b x=2 2", b"c x=3 3"];
        assert_eq!(split_lines(b"a x=1 1\nb x=2 2\n\nc x=3 3"), want);
        assert_eq!(split_lines(b"\na x=1 1\nb x=2 2\nc x=3 3\n"), want);
        assert!(split_lines(b"").is_empty());
        assert!(split_lines(b"\n\n").is_empty());
    }
}

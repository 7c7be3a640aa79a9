//! The stream the sink publishes to: created when `create_stream` asks for it, then verified,
//! before the first message is published.
//!
//! Why verify and not just `get_or_create`: several edges start at once and each may create
//! the stream. `get_or_create` is "STREAM.INFO, and on 404 STREAM.CREATE"; two edges can both
//! see the 404 and both create. nats-server 2.9.9+ answers the second create of an identical
//! config with the stream the first one made (nats-server PR #3679 fixed older servers
//! creating one raft group per concurrent request, which could drop a stream's history), and a
//! create with a *different* config (another edge's `replicas` or `max_bytes`) fails with
//! "stream name already in use". So after creating, or failing to, the sink reads the stream
//! back and checks the properties its guarantees rest on:
//!
//! - it captures `<prefix>.>`: otherwise publishes go nowhere (or to another stream);
//! - `no_ack` is off: otherwise there is no acknowledgement to count a batch written by;
//! - it is not sealed: a sealed stream refuses every message;
//! - its duplicate window is not zero: `Nats-Msg-Id` dedup is what makes a resend harmless.
//!
//! Any of those is an error that names the stream and the setting (the batch stays in the
//! spool; the operator fixes the stream). A stream that differs only in replicas, storage or
//! size from `create_stream` (another edge, or the operator, made it) is used as it is, with a
//! warning: it still acknowledges only what it stored.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::config::{CreateStream, NatsConfig};

/// What the sink learnt about the stream when it verified it; logged, and the `created` time
/// identifies this incarnation of the stream (a stream deleted and made again has another).
#[derive(Debug, Clone)]
pub struct Verified {
    pub replicas: usize,
    pub created: String,
}

/// The configuration `create_stream` asks for.
pub fn wanted_config(cfg: &NatsConfig, c: &CreateStream) -> stream::Config {
    stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![capture_subject(cfg)],
        num_replicas: c.replicas,
        max_bytes: c.max_bytes,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// The subject filter the stream must hold for the sink's subjects to be stored in it.
pub fn capture_subject(cfg: &NatsConfig) -> String {
    format!("{}.>", cfg.subject_prefix)
}

/// Creates the stream if asked to and it is missing, then reads it back and checks it (module
/// doc). A create that lost a race to another edge is not an error in itself: what counts is
/// what the stream turns out to be.
pub async fn ensure(js: &jetstream::Context, cfg: &NatsConfig) -> Result<Verified, String> {
    let mut create_error = None;
    if let Some(c) = &cfg.create_stream {
        if let Err(e) = js.get_or_create_stream(wanted_config(cfg, c)).await {
            create_error = Some(e.to_string());
        }
    }
    let info = match js.get_stream(&cfg.stream).await {
        Ok(mut s) => with_leader(&mut s, cfg).await?,
        Err(e) => {
            return Err(match create_error {
                Some(c) => format!("creating stream {:?}: {c}; reading it: {e}", cfg.stream),
                None if cfg.create_stream.is_none() => {
                    format!("stream {:?}: {e} (create it, or set create_stream)", cfg.stream)
                }
                None => format!("stream {:?}: {e}", cfg.stream),
            });
        }
    };
    let problems = problems(cfg, &info.config);
    if !problems.is_empty() {
        return Err(format!("stream {:?} cannot be used: {}", cfg.stream, problems.join("; ")));
    }
    if let Some(c) = &cfg.create_stream {
        let have = &info.config;
        if have.num_replicas != c.replicas || have.max_bytes != c.max_bytes || have.storage != stream::StorageType::File {
            tracing::warn!(
                sink = %cfg.name, stream = %cfg.stream,
                replicas = have.num_replicas, wanted_replicas = c.replicas,
                max_bytes = have.max_bytes, wanted_max_bytes = c.max_bytes,
                create_error = create_error.as_deref().unwrap_or(""),
                "the stream exists with other settings than create_stream (made by another instance or the operator); using it as it is"
            );
        }
    }
    Ok(Verified { replicas: info.config.num_replicas, created: info.created.to_string() })
}

/// The stream's info once its raft group has elected a leader. A stream just created (by this
/// edge or another) has none for a moment, and publishing then fails with "no responders":
/// the first batch would go to the spool and wait for the spool's backoff. Waiting here, a few
/// seconds at most, avoids that; if still no leader, the stream is used anyway (the publish
/// fails and is retried as usual).
async fn with_leader(s: &mut stream::Stream, cfg: &NatsConfig) -> Result<stream::Info, String> {
    let deadline = tokio::time::Instant::now() + LEADER_WAIT.min(cfg.timeout / 2);
    loop {
        let info = s.info().await.map_err(|e| format!("stream {:?} info: {e}", cfg.stream))?.clone();
        // Only a clustered server names its cluster; a standalone one has nothing to elect.
        let leaderless = info.cluster.as_ref().is_some_and(|c| c.name.is_some() && c.leader.as_deref().unwrap_or("").is_empty());
        if !leaderless || tokio::time::Instant::now() >= deadline {
            return Ok(info);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// At most this long for a new stream's leader ([`with_leader`]).
const LEADER_WAIT: Duration = Duration::from_secs(5);

/// What makes a stream unfit for the sink's guarantees (module doc); empty when it is fit.
pub fn problems(cfg: &NatsConfig, have: &stream::Config) -> Vec<String> {
    let want = capture_subject(cfg);
    let mut p = Vec::new();
    if !have.subjects.iter().any(|s| captures(s, &want)) {
        p.push(format!("it captures {:?}, not {want:?}: publishes would not be stored in it", have.subjects));
    }
    if have.no_ack {
        p.push("no_ack is set: JetStream would not acknowledge what it stored".into());
    }
    if have.sealed {
        p.push("it is sealed: it takes no new messages".into());
    }
    if have.duplicate_window.is_zero() {
        p.push("its duplicate window is 0: a batch sent again after a lost acknowledgement would be stored twice".into());
    }
    p
}

/// Whether the stream subject filter `filter` takes every subject under `want` (`<prefix>.>`).
/// Token by token: `*` matches any one token, `>` the rest.
fn captures(filter: &str, want: &str) -> bool {
    let mut f = filter.split('.');
    let mut w = want.split('.');
    loop {
        match (f.next(), w.next()) {
            (Some(">"), _) => return true,
            (Some(a), Some(b)) if a == b || (a == "*" && b != ">") => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NatsConfig {
        let spec = ds_api::SinkSpec { name: "bus".into(), options: "create_stream = { replicas = 3 }".parse().unwrap() };
        NatsConfig::from_spec(&spec).unwrap()
    }

    #[test]
    fn subject_filters_that_capture_the_prefix() {
        assert!(captures("ds.>", "ds.>"));
        assert!(captures(">", "ds.>"));
        assert!(captures("*.>", "ds.>"));
        assert!(!captures("ds.binance.>", "ds.>"), "narrower than the sink's subjects");
        assert!(!captures("ds.*", "ds.>"));
        assert!(!captures("other.>", "ds.>"));
    }

    #[test]
    fn the_stream_it_would_create_is_fit() {
        let c = cfg();
        assert_eq!(problems(&c, &wanted_config(&c, c.create_stream.as_ref().unwrap())), Vec::<String>::new());
    }

    #[test]
    fn an_unfit_stream_is_refused_with_every_reason() {
        let c = cfg();
        let have = stream::Config {
            name: "DS".into(),
            subjects: vec!["ds.binance.>".into()],
            no_ack: true,
            sealed: true,
            duplicate_window: Duration::ZERO,
            ..Default::default()
        };
        let p = problems(&c, &have);
        assert_eq!(p.len(), 4, "{p:?}");
    }
}

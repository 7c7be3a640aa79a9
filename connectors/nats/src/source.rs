//! `NatsSource`: a JetStream durable pull consumer whose messages (line protocol written by
//! the `nats` sink) go to the feed's sink as [`ds_api::Lines`], each acknowledged to JetStream
//! only when the sink's buffer says the batch holding it was stored.
//!
//! What is not acknowledged (the sink is down and the batch went to the spool, the writer
//! crashed, the channel was full) is delivered again after `ack_wait`. Delivering again is
//! harmless: a line keeps its measurement, tags and timestamp, and InfluxDB stores a point
//! written twice once (contract 4). So a writer may be killed at any moment: nothing lost,
//! nothing doubled in the store.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use ds_api::backoff::Backoff;
use ds_api::{Ack, DataPacket, FeedContext, Lines, Listener, ListenerError};
use futures::StreamExt;
use tracing::{info, warn};

use crate::config::SourceConfig;

pub struct NatsSource {
    pub cfg: SourceConfig,
}

impl NatsSource {
    async fn consume(&self, ctx: &mut FeedContext) -> Result<(), String> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("data-storage source {}", ctx.feed))
            .connect(self.cfg.servers.clone())
            .await
            .map_err(|e| format!("connecting to {:?}: {e}", self.cfg.servers))?;
        let js = jetstream::new(client);
        let stream = js.get_stream(&self.cfg.stream).await.map_err(|e| format!("stream {:?}: {e}", self.cfg.stream))?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &self.cfg.consumer,
                consumer::pull::Config {
                    durable_name: Some(self.cfg.consumer.clone()),
                    filter_subject: self.cfg.filter_subject.clone(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ack_wait: self.cfg.ack_wait,
                    max_ack_pending: self.cfg.max_ack_pending,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("consumer {:?}: {e}", self.cfg.consumer))?;
        let mut messages = consumer.messages().await.map_err(|e| format!("consumer {:?}: {e}", self.cfg.consumer))?;
        info!(feed = %ctx.feed, stream = %self.cfg.stream, consumer = %self.cfg.consumer, "reading JetStream");
        ctx.stats.connections.set(1);
        let mut stop = ctx.shutdown.clone();
        loop {
            let msg = tokio::select! {
                _ = stop.wait() => return Ok(()),
                m = messages.next() => match m {
                    None => return Err("message stream ended".into()),
                    Some(Err(e)) => return Err(format!("reading messages: {e}")),
                    Some(Ok(m)) => m,
                },
            };
            ctx.stats.frames.inc();
            ctx.stats.last_message.set(ds_api::clock::now_ns());
            let lines: std::sync::Arc<[u8]> = std::sync::Arc::from(&msg.payload[..]);
            let points = lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
            ctx.stats.points.add(points as u64);
            // A bus source may wait for room (no exchange is pinging it); waiting here rather
            // than losing the packet keeps the redelivery for real failures.
            while ctx.out.capacity_left() == 0 && !ctx.shutdown.is_triggered() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let (ack, stored) = Ack::pair();
            if !ctx.out.send(DataPacket::Lines(Lines { lines, points, ack: Some(ack) })) {
                continue; // not acknowledged: JetStream delivers it again after ack_wait
            }
            tokio::spawn(async move {
                // Err = the batch went to the spool or was lost: no ack, redelivery.
                if stored.await.is_ok() {
                    if let Err(e) = msg.ack().await {
                        warn!(error = %e, "acknowledgement to JetStream failed; the message will be delivered again (harmless)");
                    }
                }
            });
        }
    }
}

#[async_trait]
impl Listener for NatsSource {
    async fn listen(self: Box<Self>, mut ctx: FeedContext) -> Result<(), ListenerError> {
        ctx.stats.sessions.set(1);
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            if ctx.shutdown.is_triggered() {
                return Ok(());
            }
            match self.consume(&mut ctx).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    ctx.stats.connections.set(0);
                    ctx.stats.reconnects.inc();
                    let delay = backoff.next_delay();
                    warn!(feed = %ctx.feed, error = %e, retry_in_ms = delay.as_millis() as u64, "JetStream source: retrying");
                    let mut stop = ctx.shutdown.clone();
                    tokio::select! {
                        _ = stop.wait() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

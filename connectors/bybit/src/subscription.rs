//! Bybit's subscription rules: topic names, how topics are split into connections and
//! requests, and how each `op` request is matched with its answer. Pure (the clock is passed
//! in), so every rule is unit-tested.
//!
//! - A public connection's args stay under 21,000 characters in total; a feed's topics are
//!   split across connections to respect that and `topics_per_connection`.
//! - Spot takes at most 10 args per subscribe request.
//! - Bybit answers every request with one `op` answer, in order. Linear echoes `req_id`,
//!   spot acks do not, so an answer is matched by `req_id` when present, else with the oldest
//!   open request of the same op.
//! - A refused subscribe (`success:false`) names the bad topic in `ret_msg`
//!   (`Invalid topic: orderbook.200.NOPE`). That topic is skipped for the life of the feed; the
//!   other topics of the request are sent again. When the answer names no topic of the
//!   request, each topic is retried alone, so the next refusal is unambiguous.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::options::MAX_ARGS_CHARS_PER_CONNECTION;
use crate::parser::{OpKind, OpReply};

pub fn orderbook_topic(depth: u32, symbol: &str) -> String {
    format!("orderbook.{depth}.{symbol}")
}

pub fn trade_topic(symbol: &str) -> String {
    format!("publicTrade.{symbol}")
}

/// Characters a topic adds to a connection's args: the topic, its quotes and a comma. Counting
/// the JSON spelling, not just the name, keeps the total under the limit however Bybit counts.
pub fn args_chars(topic: &str) -> usize {
    topic.len() + 3
}

/// Splits topics, in order, into connections of at most `max_topics` topics whose args stay
/// strictly under `max_chars` characters, as evenly as those limits allow (800 topics that
/// need two connections get 400 each, not 795 and 5: a reconnect then resyncs at most half).
/// Returns index ranges into `topics`.
pub fn plan_connections(topics: &[String], max_topics: usize, max_chars: usize) -> Vec<std::ops::Range<usize>> {
    let fewest = greedy_groups(topics, max_topics, max_chars).len();
    if fewest <= 1 {
        return greedy_groups(topics, max_topics, max_chars);
    }
    greedy_groups(topics, max_topics.min(topics.len().div_ceil(fewest)), max_chars)
}

/// Fills each connection as far as the limits allow.
fn greedy_groups(topics: &[String], max_topics: usize, max_chars: usize) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut chars) = (0, 0);
    for (i, t) in topics.iter().enumerate() {
        let c = args_chars(t);
        if i > start && (i - start >= max_topics.max(1) || chars + c >= max_chars) {
            groups.push(start..i);
            start = i;
            chars = 0;
        }
        chars += c;
    }
    if start < topics.len() {
        groups.push(start..topics.len());
    }
    groups
}

/// [`plan_connections`] with Bybit's character limit.
pub fn plan_bybit_connections(topics: &[String], max_topics: usize) -> Vec<std::ops::Range<usize>> {
    plan_connections(topics, max_topics, MAX_ARGS_CHARS_PER_CONNECTION)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Subscribe,
    Unsubscribe,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Subscribe => "subscribe",
            Op::Unsubscribe => "unsubscribe",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request sent and not answered yet.
#[derive(Debug, Clone)]
pub struct PendingOp {
    pub req_id: String,
    pub op: Op,
    /// Indices into the connection's topics.
    pub topics: Vec<usize>,
    pub sent_at: Instant,
}

/// What an answer meant.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// The request was accepted (or a refused unsubscribe, which leaves nothing to undo).
    Confirmed { op: Op, topics: Vec<usize> },
    /// Bybit refused a subscribe. `refused` are skipped from now on; `retry` holds the
    /// requests to send for the request's other topics.
    Refused { refused: Vec<usize>, retry: Vec<String> },
    /// No open request of that op: an answer we did not ask for.
    Unexpected,
}

/// The `op` requests of one connection and the topics Bybit refused.
#[derive(Debug)]
pub struct Subscriptions {
    topics: Vec<String>,
    refused: Vec<bool>,
    pending: VecDeque<PendingOp>,
    next_req_id: u64,
    args_per_request: usize,
}

impl Subscriptions {
    pub fn new(topics: Vec<String>, args_per_request: usize) -> Self {
        let n = topics.len();
        Subscriptions { topics, refused: vec![false; n], pending: VecDeque::new(), next_req_id: 1, args_per_request: args_per_request.max(1) }
    }

    pub fn topic(&self, i: usize) -> &str {
        &self.topics[i]
    }

    pub fn is_refused(&self, i: usize) -> bool {
        self.refused[i]
    }

    /// Topics still wanted (not refused).
    pub fn wanted(&self) -> usize {
        self.refused.iter().filter(|r| !**r).count()
    }

    /// A fresh request id (also used for pings).
    pub fn next_req_id(&mut self) -> String {
        let id = self.next_req_id.to_string();
        self.next_req_id += 1;
        id
    }

    /// A new connection: forgets open requests and returns the subscribe requests for every
    /// wanted topic, `args_per_request` args each.
    pub fn subscribe_all(&mut self, now: Instant) -> Vec<String> {
        self.pending.clear();
        let wanted: Vec<usize> = (0..self.topics.len()).filter(|&i| !self.refused[i]).collect();
        let chunks: Vec<Vec<usize>> = wanted.chunks(self.args_per_request).map(<[usize]>::to_vec).collect();
        chunks.into_iter().map(|c| self.request(Op::Subscribe, c, now)).collect()
    }

    /// Unsubscribe then subscribe one topic: Bybit answers a subscribe with a fresh snapshot.
    pub fn resubscribe(&mut self, topic: usize, now: Instant) -> Vec<String> {
        vec![self.request(Op::Unsubscribe, vec![topic], now), self.request(Op::Subscribe, vec![topic], now)]
    }

    fn request(&mut self, op: Op, topics: Vec<usize>, now: Instant) -> String {
        let req_id = self.next_req_id();
        let args: Vec<&str> = topics.iter().map(|&i| self.topics[i].as_str()).collect();
        let text = serde_json::json!({ "req_id": req_id, "op": op.as_str(), "args": args }).to_string();
        self.pending.push_back(PendingOp { req_id, op, topics, sent_at: now });
        text
    }

    pub fn all_answered(&self) -> bool {
        self.pending.is_empty()
    }

    /// The oldest request unanswered for `timeout` or longer.
    pub fn overdue(&self, now: Instant, timeout: Duration) -> Option<&PendingOp> {
        self.pending.iter().find(|p| now.saturating_duration_since(p.sent_at) >= timeout)
    }

    /// The open requests, for an error message: `subscribe [orderbook.200.BTCUSDT, ...]`.
    pub fn describe_pending(&self) -> String {
        let parts: Vec<String> = self
            .pending
            .iter()
            .map(|p| format!("{} [{}]", p.op, p.topics.iter().map(|&i| self.topics[i].as_str()).collect::<Vec<_>>().join(", ")))
            .collect();
        parts.join("; ")
    }

    /// Matches an answer with its request.
    pub fn on_answer(&mut self, reply: &OpReply, now: Instant) -> AckOutcome {
        let op = match reply.op {
            OpKind::Subscribe => Op::Subscribe,
            OpKind::Unsubscribe => Op::Unsubscribe,
            _ => return AckOutcome::Unexpected,
        };
        let by_id = reply.req_id.as_deref().and_then(|id| self.pending.iter().position(|p| p.req_id == id && p.op == op));
        let Some(pos) = by_id.or_else(|| self.pending.iter().position(|p| p.op == op)) else {
            return AckOutcome::Unexpected;
        };
        let Some(p) = self.pending.remove(pos) else { return AckOutcome::Unexpected };
        if reply.success || op == Op::Unsubscribe {
            return AckOutcome::Confirmed { op, topics: p.topics };
        }
        let named: Vec<usize> = p.topics.iter().copied().filter(|&i| names_topic(&reply.ret_msg, &self.topics[i])).collect();
        if reply.ret_msg.contains("already subscribed") && !named.is_empty() {
            // Bybit has these topics already; only the others need asking again.
            let rest: Vec<usize> = p.topics.iter().copied().filter(|i| !named.contains(i)).collect();
            let retry = if rest.is_empty() { vec![] } else { vec![self.request(Op::Subscribe, rest, now)] };
            return AckOutcome::Refused { refused: vec![], retry };
        }
        let (refused, retry) = match (named.is_empty(), p.topics.len()) {
            (false, _) => {
                let rest: Vec<usize> = p.topics.iter().copied().filter(|i| !named.contains(i)).collect();
                let retry = if rest.is_empty() { vec![] } else { vec![self.request(Op::Subscribe, rest, now)] };
                (named, retry)
            }
            // One topic and a refusal: that topic, whatever the message says.
            (true, 1) => (p.topics, vec![]),
            // Several topics and no name: ask for each alone, so the next answer is clear.
            (true, _) => (vec![], p.topics.into_iter().map(|i| self.request(Op::Subscribe, vec![i], now)).collect()),
        };
        for &i in &refused {
            self.refused[i] = true;
        }
        AckOutcome::Refused { refused, retry }
    }
}

/// Whether `msg` names `topic` as a whole word: `orderbook.200.BTCUSDT` must not match inside
/// `orderbook.200.BTCUSDT-25DEC26`.
fn names_topic(msg: &str, topic: &str) -> bool {
    msg.match_indices(topic).any(|(at, _)| {
        let before = msg[..at].chars().next_back();
        let after = msg[at + topic.len()..].chars().next();
        let part_of_name = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        !part_of_name(before) && !part_of_name(after)
    })
}

/// Bybit's client heartbeat: a `{"op":"ping"}` every `interval`; no answer within `timeout`
/// means the connection is dead even if TCP has not noticed yet.
#[derive(Debug)]
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    last_sent: Option<Instant>,
    outstanding: Option<Instant>,
}

/// What a heartbeat tick asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    Idle,
    SendPing,
    /// The last ping went unanswered this long.
    Dead(Duration),
}

impl Heartbeat {
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        Heartbeat { interval, timeout, last_sent: None, outstanding: None }
    }

    /// How often the session must call [`Heartbeat::on_tick`] so that neither a ping nor a
    /// timeout is late by more than half of the shorter period.
    pub fn tick_every(&self, ack_timeout: Duration) -> Duration {
        (self.interval.min(self.timeout).min(ack_timeout) / 2).max(Duration::from_millis(50))
    }

    /// A new connection: the first ping is due one interval from now.
    pub fn reset(&mut self, now: Instant) {
        self.last_sent = Some(now);
        self.outstanding = None;
    }

    pub fn on_tick(&mut self, now: Instant) -> Beat {
        if let Some(sent) = self.outstanding {
            let waited = now.saturating_duration_since(sent);
            return if waited >= self.timeout { Beat::Dead(waited) } else { Beat::Idle };
        }
        let due = self.last_sent.is_none_or(|t| now.saturating_duration_since(t) >= self.interval);
        if due {
            self.last_sent = Some(now);
            self.outstanding = Some(now);
            Beat::SendPing
        } else {
            Beat::Idle
        }
    }

    /// A pong: returns the round trip when a ping was open.
    pub fn on_pong(&mut self, now: Instant) -> Option<Duration> {
        self.outstanding.take().map(|sent| now.saturating_duration_since(sent))
    }
}

/// `{"req_id":"7","op":"ping"}`.
pub fn ping_request(req_id: &str) -> String {
    serde_json::json!({ "req_id": req_id, "op": "ping" }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(n: usize) -> Vec<String> {
        (0..n).map(|i| orderbook_topic(200, &format!("SYM{i:02}USDT"))).collect()
    }

    fn reply(op: OpKind, success: bool, ret_msg: &str, req_id: Option<&str>) -> OpReply {
        OpReply { op, success, ret_msg: ret_msg.into(), req_id: req_id.map(String::from) }
    }

    fn args_of(request: &str) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(request).unwrap();
        v["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn connections_respect_topic_count_and_character_budget() {
        let t = topics(25);
        assert_eq!(plan_connections(&t, 10, 21_000), [0..9, 9..18, 18..25], "three connections, evened out");
        assert_eq!(plan_connections(&t, 25, 21_000), vec![0..25]);
        // 25 topics of 23 chars (+3): a 105-char budget holds 4 (104 < 105), not 5.
        assert_eq!(args_chars(&t[0]), 26);
        let g = plan_connections(&t, 1000, 105);
        assert!(g.iter().all(|r| r.len() == 4 || r.end == 25), "{g:?}");
        assert_eq!(g.iter().map(|r| r.len()).sum::<usize>(), 25);
        assert!(plan_connections(&[], 10, 100).is_empty());
        // The real linear list: 800 `orderbook.1000.*` topics exceed 21,000 chars in one.
        let linear: Vec<String> = (0..800).map(|i| orderbook_topic(1000, &format!("S{:06}USDT", i))).collect();
        let g = plan_bybit_connections(&linear, 1000);
        assert_eq!(g, [0..400, 400..800]);
        for r in &g {
            assert!(linear[r.clone()].iter().map(|t| args_chars(t)).sum::<usize>() < MAX_ARGS_CHARS_PER_CONNECTION);
        }
    }

    #[test]
    fn requests_batch_args_and_answers_match_by_id_or_order() {
        let now = Instant::now();
        let mut s = Subscriptions::new(topics(23), 10);
        let reqs = s.subscribe_all(now);
        assert_eq!(reqs.iter().map(|r| args_of(r).len()).collect::<Vec<_>>(), [10, 10, 3]);
        assert!(reqs[0].contains(r#""op":"subscribe""#) && reqs[0].contains(r#""req_id":"1""#), "{}", reqs[0]);
        // Spot-style acks (no req_id) are taken in order; a linear-style ack by id.
        assert_eq!(s.on_answer(&reply(OpKind::Subscribe, true, "subscribe", None), now), AckOutcome::Confirmed { op: Op::Subscribe, topics: (0..10).collect() });
        assert_eq!(s.on_answer(&reply(OpKind::Subscribe, true, "", Some("3")), now), AckOutcome::Confirmed { op: Op::Subscribe, topics: (20..23).collect() });
        assert!(!s.all_answered());
        assert_eq!(s.describe_pending(), format!("subscribe [{}]", topics(20)[10..].join(", ")));
        assert_eq!(s.on_answer(&reply(OpKind::Subscribe, true, "", Some("")), now), AckOutcome::Confirmed { op: Op::Subscribe, topics: (10..20).collect() });
        assert!(s.all_answered());
        assert_eq!(s.on_answer(&reply(OpKind::Subscribe, true, "", None), now), AckOutcome::Unexpected);
    }

    #[test]
    fn a_named_refusal_skips_that_topic_and_retries_the_others() {
        let now = Instant::now();
        let mut t = topics(3);
        t[1] = orderbook_topic(200, "NOPEUSDT");
        let mut s = Subscriptions::new(t, 10);
        s.subscribe_all(now);
        let out = s.on_answer(&reply(OpKind::Subscribe, false, "Invalid topic: orderbook.200.NOPEUSDT", None), now);
        let AckOutcome::Refused { refused, retry } = out else { panic!("{out:?}") };
        assert_eq!(refused, [1]);
        assert_eq!(retry.len(), 1);
        assert_eq!(args_of(&retry[0]), ["orderbook.200.SYM00USDT", "orderbook.200.SYM02USDT"]);
        assert!(s.is_refused(1) && s.wanted() == 2);
        // A reconnect does not ask for it again.
        let again = s.subscribe_all(now);
        assert_eq!(args_of(&again[0]), ["orderbook.200.SYM00USDT", "orderbook.200.SYM02USDT"]);
    }

    #[test]
    fn an_anonymous_refusal_splits_the_request() {
        let now = Instant::now();
        let mut s = Subscriptions::new(topics(3), 10);
        s.subscribe_all(now);
        let AckOutcome::Refused { refused, retry } = s.on_answer(&reply(OpKind::Subscribe, false, "error:handler not found", None), now) else { panic!() };
        assert!(refused.is_empty());
        assert_eq!(retry.iter().map(|r| args_of(r)).collect::<Vec<_>>(), [[topics(3)[0].clone()], [topics(3)[1].clone()], [topics(3)[2].clone()]]);
        // Each alone now: the second is refused without a name, and that is enough.
        assert!(matches!(s.on_answer(&reply(OpKind::Subscribe, true, "", None), now), AckOutcome::Confirmed { .. }));
        assert_eq!(s.on_answer(&reply(OpKind::Subscribe, false, "error:handler not found", None), now), AckOutcome::Refused { refused: vec![1], retry: vec![] });
        assert!(matches!(s.on_answer(&reply(OpKind::Subscribe, true, "", None), now), AckOutcome::Confirmed { .. }));
        assert!(s.all_answered());
    }

    #[test]
    fn already_subscribed_is_not_a_refusal_and_names_are_whole_words() {
        assert!(names_topic("Invalid topic: orderbook.200.BTCUSDT.", "orderbook.200.BTCUSDT"));
        let now = Instant::now();
        let t = vec![orderbook_topic(200, "BTCUSDT"), orderbook_topic(200, "BTCUSDT-25DEC26")];
        let mut s = Subscriptions::new(t, 10);
        s.subscribe_all(now);
        let out = s.on_answer(&reply(OpKind::Subscribe, false, "error:already subscribed,topic:orderbook.200.BTCUSDT", None), now);
        let AckOutcome::Refused { refused, retry } = out else { panic!() };
        assert!(refused.is_empty());
        assert_eq!(args_of(&retry[0]), ["orderbook.200.BTCUSDT-25DEC26"]);
        assert!(names_topic("Invalid topic: orderbook.200.BTCUSDT", "orderbook.200.BTCUSDT"));
        assert!(!names_topic("Invalid topic: orderbook.200.BTCUSDT-25DEC26", "orderbook.200.BTCUSDT"));
        assert!(!names_topic("Invalid topic: xorderbook.200.BTCUSDT", "orderbook.200.BTCUSDT"));
    }

    #[test]
    fn resubscribe_is_unsubscribe_then_subscribe_and_overdue_answers_show() {
        let t0 = Instant::now();
        let mut s = Subscriptions::new(topics(2), 10);
        s.subscribe_all(t0);
        s.on_answer(&reply(OpKind::Subscribe, true, "", None), t0);
        let reqs = s.resubscribe(1, t0 + Duration::from_secs(1));
        assert!(reqs[0].contains(r#""op":"unsubscribe""#) && reqs[1].contains(r#""op":"subscribe""#));
        assert_eq!(args_of(&reqs[1]), [topics(2)[1].clone()]);
        assert!(s.overdue(t0 + Duration::from_secs(10), Duration::from_secs(10)).is_none());
        let late = s.overdue(t0 + Duration::from_secs(11), Duration::from_secs(10)).unwrap();
        assert_eq!(late.op, Op::Unsubscribe);
        // A refused unsubscribe leaves nothing to undo.
        assert!(matches!(s.on_answer(&reply(OpKind::Unsubscribe, false, "not subscribed", None), t0), AckOutcome::Confirmed { op: Op::Unsubscribe, .. }));
        assert!(matches!(s.on_answer(&reply(OpKind::Subscribe, true, "", None), t0), AckOutcome::Confirmed { op: Op::Subscribe, .. }));
    }

    #[test]
    fn heartbeat_pings_on_time_and_declares_a_silent_peer_dead() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut h = Heartbeat::new(Duration::from_millis(20_000), Duration::from_millis(10_000));
        assert_eq!(h.tick_every(Duration::from_secs(10)), Duration::from_secs(5));
        h.reset(t0);
        assert_eq!(h.on_tick(s(5_000)), Beat::Idle);
        assert_eq!(h.on_tick(s(20_000)), Beat::SendPing);
        assert_eq!(h.on_pong(s(20_030)), Some(Duration::from_millis(30)));
        assert_eq!(h.on_pong(s(20_040)), None, "an unsolicited pong changes nothing");
        assert_eq!(h.on_tick(s(25_000)), Beat::Idle);
        assert_eq!(h.on_tick(s(40_000)), Beat::SendPing);
        assert_eq!(h.on_tick(s(45_000)), Beat::Idle);
        assert_eq!(h.on_tick(s(50_000)), Beat::Dead(Duration::from_secs(10)));
        // A new connection starts clean.
        h.reset(s(60_000));
        assert_eq!(h.on_tick(s(65_000)), Beat::Idle);
        assert_eq!(ping_request("9"), r#"{"op":"ping","req_id":"9"}"#);
    }
}

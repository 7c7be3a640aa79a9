//! `/health`: is every enabled feed connected and fresh, and is every sink writing?
//!
//! A feed is healthy when each of its websocket sessions has an open connection and it
//! received data (a data frame, or a REST result for a polling feed) within its
//! `health_stale_secs`. A sink is healthy when no write has been pending longer than the
//! window, and it either wrote successfully within the window or has nothing waiting (spool
//! empty, last write not failed): an idle sink is not a broken one. The answer names every
//! feed and sink that is not healthy, and why, so the alert says where to look.

use serde_json::{json, Map, Value};

use crate::status::StatsRegistry;

/// The verdict and the JSON body that explains it.
pub struct Health {
    pub healthy: bool,
    pub body: Value,
}

/// Evaluates health at `now_ns` (wall clock, injected for tests).
pub fn evaluate(reg: &StatsRegistry, now_ns: i64) -> Health {
    let age = |ns: i64| (now_ns - ns).max(0) as f64 / 1e9;
    let mut problems = Vec::new();
    let mut feeds = Map::new();
    for (i, (name, s)) in reg.feeds.iter().enumerate() {
        let stale = reg.feed_meta.get(i).map_or(reg.sink_stale, |m| m.health_stale);
        let (open, sessions) = (s.connections.get(), s.sessions.get());
        let mut why = Vec::new();
        if sessions > 0 && open < sessions {
            why.push(if open <= 0 { format!("no open connection ({sessions} wanted)") } else { format!("{open} of {sessions} connections open") });
        }
        let since = age(s.last_message.get().unwrap_or(reg.started_ns));
        if since > stale.as_secs_f64() {
            why.push(match s.last_message.get() {
                Some(_) => format!("no data for {since:.1}s (limit {}s)", stale.as_secs()),
                None => format!("no data since the start {since:.1}s ago (limit {}s)", stale.as_secs()),
            });
        }
        for w in &why {
            problems.push(json!({ "feed": name, "problem": w }));
        }
        feeds.insert(
            name.clone(),
            json!({
                "healthy": why.is_empty(),
                "connector": reg.feed_meta.get(i).map_or("", |m| m.connector),
                "connections": open,
                "sessions": sessions,
                "seconds_since_last_message": round(since),
                "problems": why,
            }),
        );
    }
    let stale = reg.sink_stale.as_secs_f64();
    let mut sinks = Map::new();
    for (name, s) in &reg.sinks {
        let mut why = Vec::new();
        if let Some(started) = s.write_started.get() {
            if age(started) > stale {
                why.push(format!("a write has been pending for {:.1}s", age(started)));
            }
        }
        let since_ok = age(s.last_write_ok.get().unwrap_or(reg.started_ns));
        let waiting = s.spool_points.get();
        let failing = s.failing_since.get();
        if since_ok > stale && (waiting > 0 || failing.is_some()) {
            let mut w = match s.last_write_ok.get() {
                Some(_) => format!("no successful write for {since_ok:.1}s"),
                None => format!("no successful write since the start {since_ok:.1}s ago"),
            };
            if let Some(f) = failing {
                w.push_str(&format!(", writes failing for {:.1}s", age(f)));
            }
            w.push_str(&format!(", {waiting} points waiting in the spool"));
            why.push(w);
        }
        for w in &why {
            problems.push(json!({ "sink": name, "problem": w }));
        }
        sinks.insert(
            name.clone(),
            json!({
                "healthy": why.is_empty(),
                "seconds_since_last_write": s.last_write_ok.get().map(|t| round(age(t))),
                "failing": failing.is_some(),
                "spool_points": waiting,
                "problems": why,
            }),
        );
    }
    let healthy = problems.is_empty();
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "problems": problems,
        "feeds": feeds,
        "sinks": sinks,
    });
    Health { healthy, body }
}

/// Milliseconds are plenty in a health answer.
fn round(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use ds_api::{FeedStats, SinkStats};

    use super::*;
    use crate::status::FeedMeta;

    const S: i64 = 1_000_000_000;

    fn registry() -> (StatsRegistry, Arc<FeedStats>, Arc<SinkStats>) {
        let feed = Arc::new(FeedStats::default());
        let sink = Arc::new(SinkStats::default());
        let reg = StatsRegistry {
            feeds: vec![("f".into(), feed.clone())],
            sinks: vec![("s".into(), sink.clone())],
            feed_meta: vec![FeedMeta { connector: "c", health_stale: Duration::from_secs(10) }],
            sink_stale: Duration::from_secs(5),
            started_ns: 100 * S,
        };
        (reg, feed, sink)
    }

    fn problems(h: &Health) -> Vec<String> {
        h.body["problems"].as_array().unwrap().iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn a_connected_fresh_feed_and_an_idle_sink_are_healthy() {
        let (reg, feed, _) = registry();
        feed.sessions.set(2);
        feed.connections.set(2);
        feed.last_message.set(105 * S);
        let h = evaluate(&reg, 110 * S);
        assert!(h.healthy, "{}", h.body);
        assert_eq!(h.body["status"], "ok");
    }

    #[test]
    fn each_feed_problem_is_named() {
        let (reg, feed, _) = registry();
        feed.sessions.set(2);
        feed.connections.set(1);
        feed.last_message.set(101 * S);
        let h = evaluate(&reg, 112 * S);
        assert!(!h.healthy);
        let p = problems(&h);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("\"feed\":\"f\"") && p[0].contains("1 of 2 connections open"), "{p:?}");
        assert!(p[1].contains("no data for 11.0s (limit 10s)"), "{p:?}");
        assert_eq!(h.body["feeds"]["f"]["healthy"], false);
    }

    #[test]
    fn a_feed_that_never_got_data_is_stale_after_the_window_from_the_start() {
        let (reg, _, _) = registry();
        assert!(evaluate(&reg, 109 * S).healthy, "REST-only feed within its first window");
        let h = evaluate(&reg, 111 * S);
        assert!(problems(&h)[0].contains("no data since the start"), "{}", h.body);
    }

    #[test]
    fn a_sink_is_unhealthy_when_failing_or_holding_data_past_the_window_or_hung() {
        let (reg, feed, sink) = registry();
        feed.last_message.set(200 * S);
        sink.last_write_ok.set(150 * S);
        assert!(evaluate(&reg, 200 * S).healthy, "idle for long with nothing waiting: healthy");
        sink.failing_since.set(198 * S);
        assert!(!evaluate(&reg, 200 * S).healthy, "failing, last success long ago");
        sink.failing_since.clear();
        sink.spool_points.set(10);
        let h = evaluate(&reg, 200 * S);
        assert!(problems(&h)[0].contains("10 points waiting in the spool"), "{}", h.body);
        sink.spool_points.set(0);
        sink.last_write_ok.set(199 * S);
        sink.failing_since.set(199 * S);
        assert!(evaluate(&reg, 200 * S).healthy, "a failure within the window is tolerated (retries)");
        sink.failing_since.clear();
        sink.write_started.set(190 * S);
        let h = evaluate(&reg, 200 * S);
        assert!(problems(&h)[0].contains("a write has been pending for 10.0s"), "{}", h.body);
    }
}

//! What a reload changes: the difference between the running feeds and sinks and a newly
//! loaded exchanges.toml, as a plan the supervisor carries out.
//!
//! The rule, so an operator can predict it: a feed or sink restarts only when its own table
//! changed (its fingerprint: the table after `${VAR}` expansion, plus a feed's symbols after
//! sharding and a sink's buffer settings). A sink that restarts takes its feeds with it, since
//! they hold its channel. Everything else keeps running untouched: no reconnect, no resync.

use std::collections::{BTreeSet, HashMap};

use crate::config::{Config, ServiceConfig};

/// A running feed or sink as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub name: String,
    pub fingerprint: String,
    /// A feed's sink; empty for a sink.
    pub sink: String,
}

/// Names to stop and to start, in the order the supervisor applies them: stop feeds, stop
/// sinks, start sinks, start feeds (so a feed never writes into a sink being replaced, and a
/// restarted feed never runs next to its old self).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    pub stop_feeds: BTreeSet<String>,
    pub stop_sinks: BTreeSet<String>,
    pub start_sinks: BTreeSet<String>,
    pub start_feeds: BTreeSet<String>,
}

impl ReloadPlan {
    pub fn between(feeds: &[Running], sinks: &[Running], new: &Config) -> ReloadPlan {
        let new_sinks: HashMap<&str, &str> = new.sinks.iter().map(|s| (s.name.as_str(), s.fingerprint.as_str())).collect();
        let new_feeds: HashMap<&str, &str> = new.feeds.iter().map(|f| (f.name.as_str(), f.fingerprint.as_str())).collect();
        let mut plan = ReloadPlan::default();
        for s in sinks {
            if new_sinks.get(s.name.as_str()) != Some(&s.fingerprint.as_str()) {
                plan.stop_sinks.insert(s.name.clone());
            }
        }
        for f in feeds {
            if new_feeds.get(f.name.as_str()) != Some(&f.fingerprint.as_str()) || plan.stop_sinks.contains(&f.sink) {
                plan.stop_feeds.insert(f.name.clone());
            }
        }
        for s in &new.sinks {
            if plan.stop_sinks.contains(&s.name) || !sinks.iter().any(|r| r.name == s.name) {
                plan.start_sinks.insert(s.name.clone());
            }
        }
        for f in &new.feeds {
            if plan.stop_feeds.contains(&f.name) || !feeds.iter().any(|r| r.name == f.name) {
                plan.start_feeds.insert(f.name.clone());
            }
        }
        plan
    }

    pub fn is_empty(&self) -> bool {
        self.stop_feeds.is_empty() && self.stop_sinks.is_empty() && self.start_sinks.is_empty() && self.start_feeds.is_empty()
    }
}

/// How a reload ended, for whoever asked for it (tests; the log says the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The plan was carried out.
    Applied(ReloadPlan),
    /// The file defines the same feeds and sinks as the running set.
    Unchanged,
    /// The new file was refused (its errors, or a directory it names cannot be opened); the
    /// running configuration stays.
    Rejected(Vec<String>),
}

/// The `[service]` keys a reload cannot apply to a running process (the log subscriber, the
/// bound metrics socket, the status task and the shard are set up once), so the operator is
/// told instead of silently ignored. `spool_dir` and `health_stale_secs` do apply: the first
/// through the sinks' fingerprints, the second to every feed and sink at once.
pub fn service_changes_needing_restart(old: &ServiceConfig, new: &ServiceConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.log_level != new.log_level {
        keys.push("log_level");
    }
    if old.log_dir != new.log_dir {
        keys.push("log_dir");
    }
    if old.status_interval_secs != new.status_interval_secs {
        keys.push("status_interval_secs");
    }
    if old.metrics_addr != new.metrics_addr {
        keys.push("metrics_addr");
    }
    if old.shard != new.shard {
        keys.push("shard");
    }
    keys
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(feeds: &str) -> Config {
        crate::plugins::link();
        let text = format!(
            r#"
[[sink]]
name = "files"
plugin = "file"
dir = "/tmp/ds-reload-plan"
[[sink]]
name = "other"
plugin = "file"
dir = "/tmp/ds-reload-plan-other"
{feeds}"#
        );
        crate::config::parse(&text, Path::new("t.toml"), &|_| None).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn feed(name: &str, symbols: &str, sink: &str) -> String {
        format!("[[feed]]\nname = \"{name}\"\nconnector = \"binance_spot_depth\"\nsymbols = [{symbols}]\nsink = \"{sink}\"\n")
    }

    fn running(c: &Config) -> (Vec<Running>, Vec<Running>) {
        let feeds = c.feeds.iter().map(|f| Running { name: f.name.clone(), fingerprint: f.fingerprint.clone(), sink: f.sink.clone() }).collect();
        let sinks = c.sinks.iter().map(|s| Running { name: s.name.clone(), fingerprint: s.fingerprint.clone(), sink: String::new() }).collect();
        (feeds, sinks)
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let a = config(&(feed("a", "\"BTCUSDT\"", "files") + &feed("b", "\"ETHUSDT\"", "files")));
        let (feeds, sinks) = running(&a);
        let again = config(&(feed("a", "\"BTCUSDT\"", "files") + &feed("b", "\"ETHUSDT\"", "files")));
        assert!(ReloadPlan::between(&feeds, &sinks, &again).is_empty());
    }

    #[test]
    fn an_added_feed_starts_and_nothing_else_moves() {
        let (feeds, sinks) = running(&config(&feed("a", "\"BTCUSDT\"", "files")));
        let plan = ReloadPlan::between(&feeds, &sinks, &config(&(feed("a", "\"BTCUSDT\"", "files") + &feed("b", "\"ETHUSDT\"", "files"))));
        assert_eq!(plan, ReloadPlan { start_feeds: set(&["b"]), ..ReloadPlan::default() });
    }

    #[test]
    fn a_removed_feed_stops_and_its_sink_stops_when_no_feed_is_left_on_it() {
        let (feeds, sinks) = running(&config(&(feed("a", "\"BTCUSDT\"", "files") + &feed("b", "\"ETHUSDT\"", "other"))));
        let plan = ReloadPlan::between(&feeds, &sinks, &config(&feed("a", "\"BTCUSDT\"", "files")));
        assert_eq!(plan, ReloadPlan { stop_feeds: set(&["b"]), stop_sinks: set(&["other"]), ..ReloadPlan::default() });
    }

    #[test]
    fn a_changed_feed_restarts_alone() {
        let (feeds, sinks) = running(&config(&(feed("a", "\"BTCUSDT\"", "files") + &feed("b", "\"ETHUSDT\"", "files"))));
        let plan = ReloadPlan::between(&feeds, &sinks, &config(&(feed("a", "\"BTCUSDT\", \"DOTUSDT\"", "files") + &feed("b", "\"ETHUSDT\"", "files"))));
        assert_eq!(plan, ReloadPlan { stop_feeds: set(&["a"]), start_feeds: set(&["a"]), ..ReloadPlan::default() });
    }

    #[test]
    fn a_feed_moved_to_another_sink_restarts_and_the_new_sink_starts() {
        let (feeds, sinks) = running(&config(&(feed("a", "\"BTCUSDT\"", "files") + &feed("b", "\"ETHUSDT\"", "files"))));
        let plan = ReloadPlan::between(&feeds, &sinks, &config(&(feed("a", "\"BTCUSDT\"", "files") + &feed("b", "\"ETHUSDT\"", "other"))));
        assert_eq!(plan, ReloadPlan { stop_feeds: set(&["b"]), start_sinks: set(&["other"]), start_feeds: set(&["b"]), ..ReloadPlan::default() });
    }

    #[test]
    fn a_changed_sink_restarts_with_every_feed_on_it() {
        let (feeds, sinks) = running(&config(&(feed("a", "\"BTCUSDT\"", "files") + &feed("b", "\"ETHUSDT\"", "files"))));
        let mut changed = config(&(feed("a", "\"BTCUSDT\"", "files") + &feed("b", "\"ETHUSDT\"", "files")));
        changed.sinks[0].fingerprint.push_str(" gzip = true");
        let plan = ReloadPlan::between(&feeds, &sinks, &changed);
        assert_eq!(
            plan,
            ReloadPlan { stop_feeds: set(&["a", "b"]), stop_sinks: set(&["files"]), start_sinks: set(&["files"]), start_feeds: set(&["a", "b"]) }
        );
    }
}

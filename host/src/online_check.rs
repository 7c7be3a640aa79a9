//! `data-storage check --online`: after the offline validation, every enabled feed asks its
//! exchange about its symbols and every sink in use is reached, through the plugins' own
//! [`ds_api::Listener::check_online`] and [`ds_api::Sink::check_online`]. All checks run at
//! once (they are independent and mostly waiting), each bounded in time, and every problem is
//! reported, named by feed or sink, never just the first.

use std::time::Duration;

use futures::future::join_all;

use ds_api::OnlineCheck;

use crate::config::Config;

/// One plugin check gets this long in all (its own requests have shorter timeouts; this
/// bounds a plugin that forgot them).
const CHECK_DEADLINE: Duration = Duration::from_secs(30);

/// Runs every check, prints one line per feed and sink to stdout, and returns the problems,
/// each prefixed with `feed "name": ` or `sink "name": `.
pub async fn run(config: Config) -> Vec<String> {
    let feeds = config.feeds.into_iter().map(|mut f| async move {
        let scope = format!("feed \"{}\"", f.name);
        (scope, bounded(f.listener.check_online()).await)
    });
    let sinks = config.sinks.into_iter().map(|mut s| async move {
        let scope = format!("sink \"{}\"", s.name);
        (scope, bounded(s.sink.check_online()).await)
    });
    let (feeds, sinks) = futures::join!(join_all(feeds), join_all(sinks));
    println!("online:");
    let mut problems = Vec::new();
    for (scope, result) in feeds.into_iter().chain(sinks) {
        match result {
            OnlineCheck::NotSupported => println!("  --   {scope}: no online check for this plugin"),
            OnlineCheck::Done { checked, problems: p } if p.is_empty() => println!("  ok   {scope}: {checked}"),
            OnlineCheck::Done { checked, problems: p } => {
                println!("  FAIL {scope}: {checked}: {} problem(s)", p.len());
                problems.extend(p.into_iter().map(|p| format!("{scope}: {p}")));
            }
        }
    }
    problems
}

async fn bounded(check: impl std::future::Future<Output = OnlineCheck>) -> OnlineCheck {
    tokio::time::timeout(CHECK_DEADLINE, check)
        .await
        .unwrap_or_else(|_| OnlineCheck::failed("", format!("no answer within {}s", CHECK_DEADLINE.as_secs())))
}

//! When a websocket session replaces a live connection, make-before-break.
//!
//! Binance closes every connection after 24 hours and announces maintenance with a
//! `serverShutdown` event. Reconnecting after the close costs a `disconnect` gap and a REST
//! snapshot per book, for an event that was known in advance. A *rollover* instead opens the
//! replacement while the old connection still reads; both feed the same handler in arrival
//! order until the replacement carries every stream (or [`SessionConfig::max_overlap`] has
//! passed), then the old one is closed. Nothing is lost and nothing is resynced.
//!
//! This file only decides *when* (a pure schedule, unit-tested); [`crate::ws::WsSession`] does
//! the connecting and reading. A replacement that cannot be opened is tried again with backoff
//! while the old connection lives; if the old one dies first, the session falls back to the
//! plain reconnect (gap markers, resync).
//!
//! [`SessionConfig::max_overlap`]: crate::ws::SessionConfig::max_overlap

use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;

/// Why the current connection is being replaced.
pub const AGE_LIMIT: &str = "connection age limit";

/// The rollover schedule of one session.
#[derive(Debug, Clone)]
pub struct RolloverSchedule {
    /// Replace a connection once it is this old (`None`: only when the handler asks).
    max_age: Option<Duration>,
    /// Pauses between failed replacement attempts, reset by a successful handover.
    retry: Backoff,
    /// The next rollover to start: when, and why.
    due: Option<(Instant, String)>,
    /// A replacement is being connected or overlaps the old connection.
    in_progress: bool,
}

impl RolloverSchedule {
    pub fn new(max_age: Option<Duration>) -> Self {
        RolloverSchedule {
            max_age,
            retry: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            due: None,
            in_progress: false,
        }
    }

    /// A connection opened at `now` (a fresh connect or a handover): its age limit starts.
    pub fn opened(&mut self, now: Instant) {
        self.in_progress = false;
        self.due = self.max_age.map(|age| (now + age, AGE_LIMIT.to_string()));
    }

    /// A connection ended without a rollover: nothing is planned until the next one opens.
    pub fn closed(&mut self) {
        self.in_progress = false;
        self.due = None;
    }

    /// The handler asked for a rollover now (e.g. `serverShutdown`); ignored while one is
    /// already in progress.
    pub fn request(&mut self, now: Instant, reason: String) {
        if !self.in_progress {
            self.due = Some((now, reason));
        }
    }

    /// When the next rollover should start, if one is planned and none is in progress.
    pub fn due_at(&self) -> Option<Instant> {
        if self.in_progress {
            return None;
        }
        self.due.as_ref().map(|(at, _)| *at)
    }

    /// Starts the planned rollover: its reason.
    pub fn start(&mut self) -> String {
        self.in_progress = true;
        self.due.take().map_or_else(|| AGE_LIMIT.to_string(), |(_, why)| why)
    }

    /// The replacement could not be opened (or died before the handover): the old connection
    /// still reads, so try again after a backoff delay, for the same reason.
    pub fn failed(&mut self, now: Instant, reason: String) -> Duration {
        let delay = self.retry.next_delay();
        self.in_progress = false;
        self.due = Some((now + delay, reason));
        delay
    }

    /// The replacement took over at `now`: its own age limit starts.
    pub fn handed_over(&mut self, now: Instant) {
        self.retry.reset();
        self.opened(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_age_limit_plans_a_rollover_and_a_handover_restarts_it() {
        let t0 = Instant::now();
        let mut s = RolloverSchedule::new(Some(Duration::from_secs(10)));
        assert_eq!(s.due_at(), None, "nothing before a connection opens");
        s.opened(t0);
        assert_eq!(s.due_at(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(s.start(), AGE_LIMIT);
        assert_eq!(s.due_at(), None, "in progress");
        let t1 = t0 + Duration::from_secs(11);
        s.handed_over(t1);
        assert_eq!(s.due_at(), Some(t1 + Duration::from_secs(10)));
        s.closed();
        assert_eq!(s.due_at(), None);
    }

    #[test]
    fn a_request_plans_one_now_and_a_failure_retries_after_a_delay() {
        let t0 = Instant::now();
        let mut s = RolloverSchedule::new(None);
        s.opened(t0);
        assert_eq!(s.due_at(), None, "no age limit");
        s.request(t0, "serverShutdown".into());
        assert_eq!(s.due_at(), Some(t0));
        assert_eq!(s.start(), "serverShutdown");
        s.request(t0, "again".into());
        assert_eq!(s.due_at(), None, "ignored while in progress");
        let delay = s.failed(t0, "serverShutdown".into());
        assert!(delay >= Duration::from_millis(500));
        assert_eq!(s.due_at(), Some(t0 + delay));
        assert_eq!(s.start(), "serverShutdown");
    }
}

//! systemd's notification protocol (sd-notify): `READY=1` after the first
//! pass, `STATUS=3 drifted, 41 compliant` when the summary changes,
//! `WATCHDOG=1` every half `WATCHDOG_USEC` from the loop itself (so a stuck
//! loop is restarted), `STOPPING=1` on the way out. Without `NOTIFY_SOCKET`
//! every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Notifier {
    ready: bool,
    last_status: String,
    watchdog: Option<Duration>,
    next_ping: Option<Instant>,
    warned: bool,
}

impl Notifier {
    /// `watchdog`: the `WATCHDOG_USEC` interval, when systemd set one.
    pub fn new(watchdog: Option<Duration>) -> Notifier {
        Notifier {
            ready: false,
            last_status: String::new(),
            watchdog: watchdog.filter(|d| !d.is_zero()),
            next_ping: None,
            warned: false,
        }
    }

    fn send(&mut self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states)
            && !self.warned
        {
            tracing::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
            self.warned = true;
        }
    }

    /// After every pass: readiness once, then the status line when it changes.
    pub fn after_pass(&mut self, status: &str) {
        if !self.ready {
            self.ready = true;
            self.last_status = status.to_string();
            self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
        } else if self.last_status != status {
            self.last_status = status.to_string();
            self.send(&[NotifyState::Status(status)]);
        }
    }

    /// When the next watchdog ping is due, if the watchdog is on.
    pub fn next_ping(&self, now: Instant) -> Option<Instant> {
        self.watchdog.map(|_| self.next_ping.unwrap_or(now))
    }

    /// Pings the watchdog when due.
    pub fn tick(&mut self, now: Instant) {
        let Some(interval) = self.watchdog else {
            return;
        };
        if self.next_ping.is_none_or(|t| now >= t) {
            self.send(&[NotifyState::Watchdog]);
            self.next_ping = Some(now + interval / 2);
        }
    }

    pub fn stopping(&mut self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_is_pinged_every_half_interval() {
        let mut n = Notifier::new(Some(Duration::from_millis(200)));
        let start = Instant::now();
        assert_eq!(n.next_ping(start), Some(start), "due at once");
        n.tick(start);
        assert_eq!(n.next_ping(start), Some(start + Duration::from_millis(100)));
        // Not due yet: no new deadline.
        n.tick(start + Duration::from_millis(99));
        assert_eq!(n.next_ping(start), Some(start + Duration::from_millis(100)));
        n.tick(start + Duration::from_millis(100));
        assert_eq!(n.next_ping(start), Some(start + Duration::from_millis(200)));
        assert_eq!(Notifier::new(None).next_ping(start), None);
        assert_eq!(Notifier::new(Some(Duration::ZERO)).next_ping(start), None);
    }
}

//! Brief busy-polling on a wire thread after socket activity.
//!
//! A proxied round trip wakes the wire thread twice (the client's message, then the upstream's answer).
//! On a virtual machine each wake-up of a sleeping thread costs an inter-processor interrupt and a context
//! switch, tens of microseconds of latency in all. For a short window after each relay event the
//! spinner keeps the runtime polling epoll without blocking, so the next message of an active session is
//! picked up by a running thread. Each turn also yields the CPU to any other runnable thread
//! (`sched_yield`). With no activity for the window the spinner parks, and an idle gateway costs nothing.
//!
//! Only a thread serving few sessions spins ([`MAX_SESSIONS`]): that is where a wake-up is most of the
//! latency the proxy adds. A thread with many sessions finds work between events without sleeping much,
//! and measured on a 2-core machine under pgbench load, spinning there cost 20 µs of CPU per transaction
//! (time the database's backends needed) and 10% of the throughput.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A thread with more live sessions than this does not spin.
pub(crate) const MAX_SESSIONS: usize = 2;

thread_local! {
    /// Live relay sessions on this thread.
    static SESSIONS: Cell<usize> = const { Cell::new(0) };
    /// Relay events on this thread so far.
    static EVENTS: Cell<u64> = const { Cell::new(0) };
    /// Whether this thread's spinner is spinning (for tests).
    static SPINNING: Cell<bool> = const { Cell::new(false) };
    /// Wakes this thread's parked spinner, if it has one.
    static WAKE: Arc<Notify> = Arc::new(Notify::new());
}

/// Counts a relay session on the current thread while it lives.
pub(crate) struct SessionOnThread(());

impl SessionOnThread {
    pub(crate) fn enter() -> Self {
        SESSIONS.with(|s| s.set(s.get() + 1));
        Self(())
    }
}

impl Drop for SessionOnThread {
    fn drop(&mut self) {
        SESSIONS.with(|s| s.set(s.get().saturating_sub(1)));
    }
}

fn few_sessions() -> bool {
    SESSIONS.with(Cell::get) <= MAX_SESSIONS
}

/// Notes a relay event on the current thread (a read from a client or an upstream).
pub(crate) fn activity() {
    EVENTS.with(|e| e.set(e.get().wrapping_add(1)));
    if few_sessions() {
        WAKE.with(|w| w.notify_one());
    }
}

/// Runs on a wire thread's single-threaded runtime for its whole life: spins for `window` after the
/// latest relay event on this thread, then parks until the next one.
pub(crate) async fn run(window: Duration) {
    let wake = WAKE.with(Arc::clone);
    loop {
        SPINNING.with(|s| s.set(false));
        // A permit stored by `activity` while the spinner was busy makes this return at once.
        wake.notified().await;
        SPINNING.with(|s| s.set(true));
        let mut seen = EVENTS.with(Cell::get);
        let mut deadline = Instant::now() + window;
        loop {
            // Rescheduled after the runtime has polled epoll (without blocking, as this task is ready).
            tokio::task::yield_now().await;
            let now_seen = EVENTS.with(Cell::get);
            let now = Instant::now();
            if !few_sessions() {
                break;
            }
            if now_seen != seen {
                seen = now_seen;
                deadline = now + window;
            } else if now >= deadline {
                break;
            }
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn spins_after_activity_and_parks_once_the_window_passes() {
        tokio::spawn(run(Duration::from_millis(200)));
        tokio::task::yield_now().await;
        assert!(!SPINNING.with(Cell::get), "spinning before any activity");
        activity();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert!(SPINNING.with(Cell::get), "not spinning after activity");
        // Activity inside the window extends it.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            activity();
            assert!(
                SPINNING.with(Cell::get),
                "stopped spinning inside the window"
            );
        }
        // Two windows: a permit stored by activity while spinning buys one more.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            !SPINNING.with(Cell::get),
            "still spinning long after the window"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_thread_with_many_sessions_does_not_spin() {
        tokio::spawn(run(Duration::from_millis(200)));
        let sessions: Vec<_> = (0..=MAX_SESSIONS)
            .map(|_| SessionOnThread::enter())
            .collect();
        activity();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert!(!SPINNING.with(Cell::get), "spinning with many sessions");
        drop(sessions);
        let _one = SessionOnThread::enter();
        activity();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert!(SPINNING.with(Cell::get), "not spinning with one session");
    }
}

//! Waiting for a condition another task changes, with a deadline: the shutdown's steps (sessions gone,
//! records written, executions reported) each wait this way.

use std::time::Duration;

/// Checks `done` every `every` until it holds or `limit` has passed; true when it holds.
pub async fn until(limit: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
    true
}

//! PAUSE / RESUME from the console: while paused, a client that needs a server connection (a
//! new transaction) waits; transactions already running go on. Clients stay connected.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

pub struct Pause {
    /// Read on every checkout: one atomic load, not the watch's lock.
    flag: AtomicBool,
    paused: watch::Sender<bool>,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            flag: AtomicBool::new(false),
            paused: watch::Sender::new(false),
        }
    }
}

impl Pause {
    pub fn set(&self, paused: bool) {
        self.flag.store(paused, Ordering::Release);
        self.paused.send_replace(paused);
    }

    pub fn is_paused(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Returns at once unless paused; otherwise when resumed.
    pub async fn wait(&self) {
        let mut rx = self.paused.subscribe();
        // The sender lives as long as `self`: the wait cannot fail while it is borrowed.
        let _ = rx.wait_for(|paused| !paused).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_go_on_at_resume() {
        let pause = Arc::new(Pause::default());
        pause.wait().await;
        pause.set(true);
        let waiter = tokio::spawn({
            let pause = pause.clone();
            async move { pause.wait().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        pause.set(false);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("resumed")
            .expect("task");
    }
}

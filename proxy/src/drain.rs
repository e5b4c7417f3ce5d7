//! Ends the process as soon as a graceful shutdown has nothing left to wait for.
//!
//! On SIGTERM pingora stops accepting and then sleeps for the whole grace period before it
//! exits. Sessions end themselves earlier (at their transaction's end, or at the grace deadline),
//! so once none is left there is no reason to keep an orchestrator waiting: exit 0 right away.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::admin::Admin;

/// Reports how much work is still in flight (connected clients, open streams).
pub type InFlight = Arc<dyn Fn() -> usize + Send + Sync>;

pub struct DrainWatcher {
    in_flight: InFlight,
    /// Told when draining starts, so `/readyz` turns 503.
    admin: Arc<Admin>,
}

impl DrainWatcher {
    pub fn new(in_flight: InFlight, admin: Arc<Admin>) -> Self {
        DrainWatcher { in_flight, admin }
    }
}

#[async_trait]
impl BackgroundService for DrainWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        self.admin.draining.store(true, Ordering::Relaxed);
        tracing::info!(in_flight = (self.in_flight)(), "shutting down: draining");
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if (self.in_flight)() == 0 {
                tracing::info!("drained: exiting");
                #[allow(clippy::exit)]
                std::process::exit(0);
            }
        }
    }
}

//! Layer: driver. The control port's front door (TCP 6783): which accepted connections get a
//! handshake, and how often a refusal is logged. The rules are
//! [`weft_mesh::admission::ControlAdmission`] and [`weft_mesh::admission::LogLimiter`]; this
//! module feeds them the connection registry's counts and the clock.
//!
//! A connection is refused (closed at once) when the router is at `--conn-limit`, when its
//! source address already has a few connections whose handshake has not completed, when too
//! many such connections are open in total, or when the source opens new connections faster
//! than a peer ever needs to. Handshakes that do not complete time out
//! ([`weft_mesh::ConnConfig::hello_timeout`]). So a host that keeps reopening hundreds of idle
//! connections holds a handful of slots, never the ones real peers need, and the log gets a
//! few lines and then one summary line per source and minute instead of a line per refusal.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use weft_mesh::Instant;
use weft_mesh::admission::{ControlAdmission, LogLimiter};

use crate::state::Shared;

/// Refusals logged per source and reason before the rest are only counted.
const LOG_BURST: u32 = 3;
/// The window after which a summary of what was not logged is written.
const LOG_WINDOW: Duration = Duration::from_secs(60);

/// The control listener's admission state.
#[derive(Debug)]
pub struct ControlGate {
    inner: Mutex<GateState>,
}

#[derive(Debug)]
struct GateState {
    admission: ControlAdmission,
    log: LogLimiter<(IpAddr, String)>,
}

impl Default for ControlGate {
    fn default() -> Self {
        Self::new()
    }
}

impl ControlGate {
    /// The default rule ([`ControlAdmission::new`]).
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(GateState {
                admission: ControlAdmission::new(),
                log: LogLimiter::new(LOG_WINDOW, LOG_BURST, 1024),
            }),
        }
    }

    /// Whether to run the connection accepted from `addr` (`conn_limit` 0: no overall limit).
    pub fn admit(
        &self,
        shared: &Shared,
        now: Instant,
        addr: SocketAddr,
        conn_limit: usize,
    ) -> bool {
        let (from_source, unauthenticated, current) = {
            let view = shared.view();
            let pending = view
                .conns
                .iter()
                .filter(|r| !r.outbound && r.remote.is_none());
            let (mut from_source, mut total) = (0, 0);
            for r in pending {
                total += 1;
                if r.address.ip() == addr.ip() {
                    from_source += 1;
                }
            }
            (from_source, total, view.conns.len())
        };
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let verdict = if conn_limit > 0 && current >= conn_limit {
            Err(format!("connection limit reached ({conn_limit})"))
        } else {
            g.admission
                .admit(now, addr.ip(), from_source, unauthenticated)
                .map_err(|e| e.to_string())
        };
        let summaries = g.log.take_summaries(now);
        log_summaries(summaries);
        match verdict {
            Ok(()) => true,
            Err(reason) => {
                if g.log.check(now, &(addr.ip(), reason.clone())) {
                    tracing::warn!("refusing connection from {addr}: {reason}");
                }
                false
            }
        }
    }

    /// Writes the summaries that are due (call it now and then: a source that stops sending
    /// still gets its count written).
    pub fn flush(&self, now: Instant) -> Option<Instant> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        log_summaries(g.log.take_summaries(now));
        g.log.poll_timeout()
    }
}

fn log_summaries(summaries: Vec<weft_mesh::admission::Suppressed<(IpAddr, String)>>) {
    for s in summaries {
        match s.key {
            Some((ip, reason)) => tracing::warn!(
                "refused {} more connections from {ip} in the last {} s: {reason}",
                s.count,
                LOG_WINDOW.as_secs()
            ),
            None => tracing::warn!("refused {} more connections from other sources", s.count),
        }
    }
}

/// Writes the gate's summaries when they are due, for the router's lifetime.
pub async fn flush_summaries(gate: std::sync::Arc<ControlGate>, clock: crate::dataplane::Clock) {
    loop {
        let next = gate.flush(clock.now());
        let wait = next.map_or(LOG_WINDOW, |t| {
            t.saturating_duration_since(clock.now())
                .max(Duration::from_millis(100))
        });
        tokio::time::sleep(wait).await;
    }
}

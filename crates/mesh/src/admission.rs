//! Layer: pure logic. Who a listener lets in, and how often a repeated log line is written:
//! the rules that keep one caller from holding the router's connections, file descriptors,
//! memory or log (sans-IO; `now` is an argument).
//!
//! - [`Admission`]: caps on concurrent connections, per key (a caller: a uid, a source
//!   address) and in total. The driver admits a connection before it spends anything on it
//!   and releases it when the connection ends.
//! - [`RateLimit`]: a token bucket per key for new connections (so a host reopening hundreds
//!   of connections per second costs a few accepts, not a few hundred handshakes).
//! - [`ControlAdmission`]: the control port's rule, built from the two: per source address at
//!   most a few connections whose handshake has not completed, and new connections at a bounded
//!   rate; in total at most a bounded number of unauthenticated connections, so peers that have
//!   completed their handshake and new peers from other addresses always find room.
//! - [`LogLimiter`]: per key, the first few lines of a window are written, the rest counted;
//!   when the window ends a single summary line with the count replaces them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::time::Instant;

/// Caps on concurrent connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// At most this many from one key (0: unlimited).
    pub per_key: usize,
    /// At most this many in total (0: unlimited).
    pub total: usize,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The caller holds as many connections as one caller may.
    #[error("too many connections from this caller (limit {limit})")]
    PerKey {
        /// The cap.
        limit: usize,
    },
    /// The listener holds as many connections as it may.
    #[error("too many connections (limit {limit})")]
    Total {
        /// The cap.
        limit: usize,
    },
    /// The caller opens new connections faster than allowed.
    #[error("new connections arrive too fast from this caller")]
    Rate,
}

/// Counts open connections per key against [`Caps`].
#[derive(Clone, Debug)]
pub struct Admission<K> {
    caps: Caps,
    open: BTreeMap<K, usize>,
    total: usize,
}

impl<K: Ord + Clone> Admission<K> {
    /// No connection open yet.
    pub fn new(caps: Caps) -> Self {
        Self {
            caps,
            open: BTreeMap::new(),
            total: 0,
        }
    }

    /// Admits one more connection of `key`, or says why not (then nothing is counted).
    pub fn admit(&mut self, key: &K) -> Result<(), Refused> {
        let mine = self.open.get(key).copied().unwrap_or(0);
        if self.caps.per_key > 0 && mine >= self.caps.per_key {
            return Err(Refused::PerKey {
                limit: self.caps.per_key,
            });
        }
        if self.caps.total > 0 && self.total >= self.caps.total {
            return Err(Refused::Total {
                limit: self.caps.total,
            });
        }
        *self.open.entry(key.clone()).or_default() += 1;
        self.total += 1;
        Ok(())
    }

    /// A connection of `key` admitted earlier ended.
    pub fn release(&mut self, key: &K) {
        if let Some(n) = self.open.get_mut(key) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.open.remove(key);
            }
        }
    }

    /// Connections of `key` open now.
    pub fn open(&self, key: &K) -> usize {
        self.open.get(key).copied().unwrap_or(0)
    }

    /// Connections open now.
    pub fn total(&self) -> usize {
        self.total
    }
}

/// A token bucket per key: `burst` tokens, one more every `every`. Keys whose bucket is full
/// again are forgotten, so the table only holds callers that were busy recently; at most
/// `max_keys` are tracked, and while the table is full new keys share one bucket.
#[derive(Clone, Debug)]
pub struct RateLimit<K> {
    burst: u32,
    every: Duration,
    max_keys: usize,
    buckets: BTreeMap<K, Bucket>,
    overflow: Bucket,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u32,
    /// When the last token was added (or the bucket created).
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, burst: u32, every: Duration) {
        if every.is_zero() {
            self.tokens = burst;
            self.at = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.at);
        let n = elapsed.as_nanos() / every.as_nanos().max(1);
        if n == 0 {
            return;
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.tokens = self.tokens.saturating_add(n).min(burst);
        self.at = if self.tokens == burst {
            now
        } else {
            self.at + every * n
        };
    }
}

impl<K: Ord + Clone> RateLimit<K> {
    /// `burst` at once, then one every `every`.
    pub fn new(burst: u32, every: Duration, max_keys: usize) -> Self {
        Self {
            burst,
            every,
            max_keys: max_keys.max(1),
            buckets: BTreeMap::new(),
            overflow: Bucket {
                tokens: burst,
                at: Instant::ZERO,
            },
        }
    }

    /// Takes a token of `key` if there is one.
    pub fn allow(&mut self, now: Instant, key: &K) -> bool {
        let (burst, every) = (self.burst, self.every);
        if !self.buckets.contains_key(key) {
            if self.buckets.len() >= self.max_keys {
                self.buckets.retain(|_, b| {
                    b.refill(now, burst, every);
                    b.tokens < burst
                });
            }
            if self.buckets.len() >= self.max_keys {
                self.overflow.refill(now, burst, every);
                return take(&mut self.overflow);
            }
            self.buckets.insert(
                key.clone(),
                Bucket {
                    tokens: burst,
                    at: now,
                },
            );
        }
        let Some(b) = self.buckets.get_mut(key) else {
            return false;
        };
        b.refill(now, burst, every);
        take(b)
    }
}

fn take(b: &mut Bucket) -> bool {
    if b.tokens == 0 {
        return false;
    }
    b.tokens -= 1;
    true
}

/// The control port's admission rule (see the module documentation).
#[derive(Clone, Debug)]
pub struct ControlAdmission {
    /// At most this many connections per source address whose handshake is not complete.
    pub per_source: usize,
    /// At most this many such connections in total.
    pub total: usize,
    rate: RateLimit<IpAddr>,
}

impl ControlAdmission {
    /// At most 4 handshakes under way per source address and 64 in total; per source a burst
    /// of 8 new connections, then one every 500 ms.
    pub fn new() -> Self {
        Self::with(4, 64, 8, Duration::from_millis(500))
    }

    /// With explicit caps and rate.
    pub fn with(per_source: usize, total: usize, burst: u32, every: Duration) -> Self {
        Self {
            per_source,
            total,
            rate: RateLimit::new(burst, every, 4096),
        }
    }

    /// Whether to accept a new connection from `source`, given how many connections without a
    /// completed handshake there are from it and in total.
    pub fn admit(
        &mut self,
        now: Instant,
        source: IpAddr,
        unauthenticated_from_source: usize,
        unauthenticated_total: usize,
    ) -> Result<(), Refused> {
        if unauthenticated_from_source >= self.per_source {
            return Err(Refused::PerKey {
                limit: self.per_source,
            });
        }
        if unauthenticated_total >= self.total {
            return Err(Refused::Total { limit: self.total });
        }
        if !self.rate.allow(now, &source) {
            return Err(Refused::Rate);
        }
        Ok(())
    }
}

impl Default for ControlAdmission {
    fn default() -> Self {
        Self::new()
    }
}

/// Rate-limits repeated log lines per key (see the module documentation).
#[derive(Clone, Debug)]
pub struct LogLimiter<K> {
    window: Duration,
    burst: u32,
    max_keys: usize,
    entries: BTreeMap<K, LogWindow>,
    /// Lines of keys that found the table full, not written.
    overflow: u64,
}

#[derive(Clone, Copy, Debug)]
struct LogWindow {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// A summary to write: so many lines of `key` were left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppressed<K> {
    /// Which line (`None`: lines of callers beyond the table's size).
    pub key: Option<K>,
    /// How many were left out.
    pub count: u64,
}

impl<K: Ord + Clone> LogLimiter<K> {
    /// Per key and `window`, the first `burst` lines are written; at most `max_keys` keys are
    /// tracked at once.
    pub fn new(window: Duration, burst: u32, max_keys: usize) -> Self {
        Self {
            window,
            burst,
            max_keys: max_keys.max(1),
            entries: BTreeMap::new(),
            overflow: 0,
        }
    }

    /// Whether to write this line of `key` now (otherwise it is counted for the summary).
    pub fn check(&mut self, now: Instant, key: &K) -> bool {
        if let Some(w) = self.entries.get_mut(key) {
            if now < w.start + self.window || w.suppressed > 0 {
                // Still in the window, or its summary not taken yet: count it there.
                if w.logged < self.burst && now < w.start + self.window {
                    w.logged += 1;
                    return true;
                }
                w.suppressed += 1;
                return false;
            }
            *w = LogWindow {
                start: now,
                logged: 1,
                suppressed: 0,
            };
            return self.burst > 0;
        }
        if self.entries.len() >= self.max_keys {
            let window = self.window;
            self.entries
                .retain(|_, w| w.suppressed > 0 || now < w.start + window);
        }
        if self.entries.len() >= self.max_keys {
            self.overflow += 1;
            return false;
        }
        self.entries.insert(
            key.clone(),
            LogWindow {
                start: now,
                logged: u32::from(self.burst > 0),
                suppressed: u64::from(self.burst == 0),
            },
        );
        self.burst > 0
    }

    /// The summaries due now (windows that ended with lines left out), oldest key first.
    pub fn take_summaries(&mut self, now: Instant) -> Vec<Suppressed<K>> {
        let window = self.window;
        let mut out = Vec::new();
        self.entries.retain(|k, w| {
            if now < w.start + window {
                return true;
            }
            if w.suppressed > 0 {
                out.push(Suppressed {
                    key: Some(k.clone()),
                    count: w.suppressed,
                });
            }
            false
        });
        if self.overflow > 0 {
            out.push(Suppressed {
                key: None,
                count: self.overflow,
            });
            self.overflow = 0;
        }
        out
    }

    /// When the next summary may be due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter(|w| w.suppressed > 0)
            .map(|w| w.start + self.window)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn caps_per_key_and_total() {
        let mut a = Admission::new(Caps {
            per_key: 2,
            total: 3,
        });
        assert_eq!(a.admit(&"nobody"), Ok(()));
        assert_eq!(a.admit(&"nobody"), Ok(()));
        assert_eq!(a.admit(&"nobody"), Err(Refused::PerKey { limit: 2 }));
        assert_eq!(a.admit(&"daemon"), Ok(()));
        assert_eq!(a.admit(&"root"), Err(Refused::Total { limit: 3 }));
        assert_eq!(a.total(), 3);
        a.release(&"nobody");
        assert_eq!(a.open(&"nobody"), 1);
        assert_eq!(a.admit(&"root"), Ok(()));
        // Releasing what was never admitted changes nothing.
        a.release(&"ghost");
        assert_eq!(a.total(), 3);
        for k in ["nobody", "daemon", "root"] {
            a.release(&k);
        }
        assert_eq!(a.total(), 0);
        assert_eq!(a.open(&"nobody"), 0);
        let mut free = Admission::new(Caps {
            per_key: 0,
            total: 0,
        });
        for _ in 0..1000 {
            assert_eq!(free.admit(&1), Ok(()));
        }
    }

    #[test]
    fn token_bucket_refills_and_forgets_idle_callers() {
        let mut r = RateLimit::new(3, Duration::from_millis(100), 2);
        for _ in 0..3 {
            assert!(r.allow(t(0), &1));
        }
        assert!(!r.allow(t(50), &1));
        assert!(r.allow(t(100), &1), "one token after 100 ms");
        assert!(!r.allow(t(150), &1));
        assert!(
            r.allow(t(350), &1) && r.allow(t(350), &1),
            "two more by 350 ms"
        );
        assert!(!r.allow(t(350), &1));
        // The table holds two keys; a third busy one shares the overflow bucket.
        assert!(r.allow(t(350), &2));
        for _ in 0..3 {
            assert!(r.allow(t(350), &3));
        }
        assert!(!r.allow(t(350), &4), "overflow bucket empty");
        // Much later both buckets are full again and forgotten: new keys get their own.
        assert!(r.allow(t(10_000), &5));
        assert!(r.allow(t(10_000), &6));
    }

    #[test]
    fn control_port_rule() {
        let mut c = ControlAdmission::with(4, 64, 8, Duration::from_millis(500));
        let a: IpAddr = "192.0.2.13".parse().unwrap();
        let b: IpAddr = "192.0.2.12".parse().unwrap();
        assert_eq!(c.admit(t(0), a, 4, 10), Err(Refused::PerKey { limit: 4 }));
        assert_eq!(c.admit(t(0), b, 0, 64), Err(Refused::Total { limit: 64 }));
        for _ in 0..8 {
            assert_eq!(c.admit(t(0), a, 0, 0), Ok(()));
        }
        assert_eq!(c.admit(t(10), a, 0, 0), Err(Refused::Rate));
        // Another address is not affected by the first one's reopening.
        assert_eq!(c.admit(t(10), b, 0, 0), Ok(()));
        assert_eq!(c.admit(t(510), a, 0, 0), Ok(()));
        // 400 reopenings a second from one address: about two admitted per second.
        let admitted = (0..4000u64)
            .filter(|k| c.admit(t(1_000 + k * 2), a, 0, 0).is_ok())
            .count();
        assert!((14..=18).contains(&admitted), "{admitted} admitted in 8 s");
    }

    #[test]
    fn log_lines_are_summarised() {
        let mut l = LogLimiter::new(Duration::from_secs(10), 2, 3);
        assert!(l.check(t(0), &"refused 192.0.2.13"));
        assert!(l.check(t(1), &"refused 192.0.2.13"));
        for k in 0..400 {
            assert!(!l.check(t(2 + k), &"refused 192.0.2.13"));
        }
        assert!(
            l.check(t(5), &"refused 192.0.2.14"),
            "other keys are separate"
        );
        assert_eq!(l.poll_timeout(), Some(t(10_000)));
        assert_eq!(l.take_summaries(t(9_999)), vec![]);
        assert_eq!(
            l.take_summaries(t(10_000)),
            vec![Suppressed {
                key: Some("refused 192.0.2.13"),
                count: 400
            }]
        );
        // A new window starts with the next line.
        assert!(l.check(t(10_001), &"refused 192.0.2.13"));
        assert_eq!(l.poll_timeout(), None);
        // A line arriving after the window ended but before the summary was taken is
        // counted into that summary (nothing is lost, the order stays right).
        let mut l = LogLimiter::new(Duration::from_secs(10), 1, 8);
        assert!(l.check(t(0), &1));
        assert!(!l.check(t(1), &1));
        assert!(!l.check(t(20_000), &1));
        assert_eq!(
            l.take_summaries(t(20_000)),
            vec![Suppressed {
                key: Some(1),
                count: 2
            }]
        );
        // Beyond the table's size lines are only counted.
        let mut l = LogLimiter::new(Duration::from_secs(10), 1, 2);
        assert!(l.check(t(0), &1) && l.check(t(0), &2));
        assert!(!l.check(t(0), &3));
        assert_eq!(
            l.take_summaries(t(0)),
            vec![Suppressed {
                key: None,
                count: 1
            }]
        );
    }
}

//! Bounding the work one client can cause: a token bucket per source address, checked before a
//! query is even parsed, so a flood from one place costs a table lookup per datagram and cannot
//! starve the other clients.

use std::collections::HashMap;
use std::net::IpAddr;

use weft_mesh::Instant;

/// Most sources tracked; past that, sources not seen recently are forgotten, and if every one
/// is busy, newcomers share one bucket.
pub const MAX_SOURCES: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Per-source token buckets: `rate` queries per second, bursts of up to `rate` queries.
#[derive(Debug)]
pub struct Limiter {
    rate: f64,
    buckets: HashMap<IpAddr, Bucket>,
    shared: Bucket,
}

impl Limiter {
    /// A limiter allowing `rate` queries per second per source; 0 allows everything.
    pub fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            buckets: HashMap::new(),
            shared: Bucket {
                tokens: f64::from(rate),
                last: Instant::ZERO,
            },
        }
    }

    /// Whether a query from `src` at `now` may be handled (and take its token).
    pub fn allow(&mut self, now: Instant, src: IpAddr) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let rate = self.rate;
        if !self.buckets.contains_key(&src) && self.buckets.len() >= MAX_SOURCES {
            // Forget the sources whose bucket has refilled: they have been quiet for a while.
            self.buckets
                .retain(|_, b| refill(*b, now, rate).tokens < rate);
        }
        let bucket = if self.buckets.len() < MAX_SOURCES || self.buckets.contains_key(&src) {
            self.buckets.entry(src).or_insert(Bucket {
                tokens: rate,
                last: now,
            })
        } else {
            &mut self.shared
        };
        *bucket = refill(*bucket, now, rate);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn refill(b: Bucket, now: Instant, rate: f64) -> Bucket {
    let dt = now.saturating_duration_since(b.last).as_secs_f64();
    Bucket {
        tokens: (b.tokens + dt * rate).min(rate),
        last: now.max(b.last),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_flooding_source_does_not_starve_another() {
        let mut l = Limiter::new(100);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let now = Instant::ZERO;
        let allowed = (0..1000).filter(|_| l.allow(now, a)).count();
        assert_eq!(allowed, 100);
        assert!(l.allow(now, b));
        // Refills with time, up to the burst.
        let later = now + Duration::from_millis(500);
        let allowed = (0..1000).filter(|_| l.allow(later, a)).count();
        assert_eq!(allowed, 50);
        let much_later = now + Duration::from_secs(60);
        let allowed = (0..1000).filter(|_| l.allow(much_later, a)).count();
        assert_eq!(allowed, 100);
    }

    #[test]
    fn zero_means_unlimited_and_the_table_is_bounded() {
        let mut l = Limiter::new(0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..10_000).all(|_| l.allow(Instant::ZERO, a)));
        let mut l = Limiter::new(10);
        for i in 0..(MAX_SOURCES as u32 + 100) {
            let src = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            for _ in 0..10 {
                l.allow(Instant::ZERO, src);
            }
        }
        assert!(l.buckets.len() <= MAX_SOURCES);
    }
}

//! Layer: pure logic. The mesh's notion of time.
//!
//! The state machines never read a clock. Their driver passes `now` as an [`Instant`]: a
//! duration since an arbitrary epoch the driver picks. The router maps `std::time::Instant` onto
//! it (epoch = process start); the simulator and the tests start at [`Instant::ZERO`] and move
//! time forward by hand.

use std::fmt;
use std::ops::{Add, AddAssign};
use std::time::Duration;

/// A point in time, as the duration since the driver's epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(Duration);

impl Instant {
    /// The epoch itself.
    pub const ZERO: Self = Self(Duration::ZERO);

    /// The instant `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    /// The instant `since_epoch` after the epoch.
    pub const fn from_duration(since_epoch: Duration) -> Self {
        Self(since_epoch)
    }

    /// Time elapsed since the epoch.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// Whole milliseconds since the epoch (saturating at `u64::MAX`).
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    /// Time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// `self + d`, or `None` on overflow.
    pub fn checked_add(self, d: Duration) -> Option<Self> {
        self.0.checked_add(d).map(Self)
    }

    /// `self + d`, clamped to the largest representable instant.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d))
    }
}

impl Add<Duration> for Instant {
    type Output = Self;

    /// Saturates instead of panicking: a deadline past the end of time is never reached.
    fn add(self, d: Duration) -> Self {
        self.saturating_add(d)
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.0.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        let t = Instant::from_millis(1500);
        assert_eq!(t.as_millis(), 1500);
        assert_eq!(Instant::ZERO + Duration::from_millis(1500), t);
        assert_eq!(
            t.saturating_duration_since(Instant::ZERO),
            Duration::from_millis(1500)
        );
        assert_eq!(Instant::ZERO.saturating_duration_since(t), Duration::ZERO);
        assert!(Instant::ZERO < t);
        let mut u = t;
        u += Duration::from_secs(1);
        assert_eq!(u, Instant::from_millis(2500));
        let end = Instant::from_duration(Duration::MAX);
        assert_eq!(end + Duration::from_secs(1), end);
        assert_eq!(end.checked_add(Duration::from_secs(1)), None);
        assert_eq!(t.to_string(), "1.500s");
    }
}

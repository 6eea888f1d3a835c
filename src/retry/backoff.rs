//! Exponential backoff and its jitter strategies.

use std::time::Duration;

/// How a computed backoff is randomised.
///
/// With `t = min(base × 2ⁿ, max)` (n = retries already made) and `r` uniform in `[0, 1)`:
///
/// | variant | wait |
/// |---|---|
/// | [`None`](Jitter::None) | `t` |
/// | [`Sdk`](Jitter::Sdk) (default) | `t × (1 − 0.25 r)`: the Anthropic and OpenAI SDKs' jitter, at most 25 % shorter |
/// | [`Full`](Jitter::Full) | `t × r` (AWS "full jitter") |
/// | [`Equal`](Jitter::Equal) | `t/2 + t/2 × r` (AWS "equal jitter") |
/// | [`Decorrelated`](Jitter::Decorrelated) | `min(max, base + r × (3 × previous − base))`, previous starting at `base` (AWS "decorrelated jitter"; ignores n) |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Jitter {
    /// No randomness: exactly `t`.
    None,
    /// `t × (1 − 0.25 r)`, as the official SDKs do.
    #[default]
    Sdk,
    /// `t × r`: spreads retries the most, may retry at once.
    Full,
    /// `t/2 + t/2 × r`: at least half of `t`.
    Equal,
    /// Each wait drawn between `base` and three times the previous wait, capped at `max`.
    Decorrelated,
}

/// Exponential backoff used when the server did not say how long to wait.
///
/// The default matches the official Anthropic and OpenAI SDKs:
/// `min(0.5 s × 2ⁿ, 8 s) × (1 − 0.25 × random)`, where n counts the retries already made.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_limits::retry::{Backoff, Jitter};
///
/// let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2))
///     .jitter(Jitter::None);
/// let mut rng = fastrand::Rng::with_seed(1);
/// let waits: Vec<_> = (0..6).map(|n| backoff.delay(n, Duration::ZERO, &mut rng)).collect();
/// assert_eq!(waits[0], Duration::from_millis(100));
/// assert_eq!(waits[4], Duration::from_millis(1600));
/// assert_eq!(waits[5], Duration::from_secs(2));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::sdk()
    }
}

impl Backoff {
    /// The SDKs' backoff: 0.5 s doubling up to 8 s, [`Jitter::Sdk`].
    pub const fn sdk() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(8),
            jitter: Jitter::Sdk,
        }
    }

    /// `base` doubling on each retry up to `max`, with [`Jitter::Sdk`] (change it with
    /// [`jitter`](Self::jitter)). A `base` above `max` is read as `max`.
    pub const fn exponential(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            jitter: Jitter::Sdk,
        }
    }

    /// Always `wait`, without jitter.
    pub const fn constant(wait: Duration) -> Self {
        Backoff {
            base: wait,
            max: wait,
            jitter: Jitter::None,
        }
    }

    /// Sets the jitter strategy.
    pub const fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The first wait before jitter.
    pub const fn base(&self) -> Duration {
        self.base
    }

    /// The largest wait before jitter.
    pub const fn max(&self) -> Duration {
        self.max
    }

    /// The jitter strategy.
    pub const fn jitter_kind(&self) -> Jitter {
        self.jitter
    }

    /// The wait before the retry that follows `retries` retries already made; `previous` is the
    /// previous backoff wait (zero before the first), used by [`Jitter::Decorrelated`]. Draws one
    /// number from `rng` unless the jitter is [`Jitter::None`].
    pub fn delay(&self, retries: u32, previous: Duration, rng: &mut fastrand::Rng) -> Duration {
        let base = self.base.min(self.max);
        let factor = 1u32.checked_shl(retries).unwrap_or(u32::MAX);
        let t = base.checked_mul(factor).unwrap_or(self.max).min(self.max);
        match self.jitter {
            Jitter::None => t,
            Jitter::Sdk => t.mul_f64(1.0 - 0.25 * rng.f64()),
            Jitter::Full => t.mul_f64(rng.f64()),
            Jitter::Equal => t / 2 + (t / 2).mul_f64(rng.f64()),
            Jitter::Decorrelated => {
                let previous = if previous.is_zero() { base } else { previous };
                let upper = previous.saturating_mul(3).max(base);
                (base + (upper - base).mul_f64(rng.f64())).min(self.max)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_sequence_without_jitter() {
        let b = Backoff::sdk().jitter(Jitter::None);
        let mut rng = fastrand::Rng::with_seed(3);
        let got: Vec<u128> = (0..7)
            .map(|n| b.delay(n, Duration::ZERO, &mut rng).as_millis())
            .collect();
        assert_eq!(got, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(b.delay(u32::MAX, Duration::ZERO, &mut rng), b.max());
    }

    #[test]
    fn jitter_bounds() {
        let mut rng = fastrand::Rng::with_seed(11);
        for n in 0..8 {
            let t = Backoff::sdk()
                .jitter(Jitter::None)
                .delay(n, Duration::ZERO, &mut rng);
            for _ in 0..200 {
                let sdk = Backoff::sdk().delay(n, Duration::ZERO, &mut rng);
                assert!(sdk <= t && sdk > t.mul_f64(0.75) - Duration::from_nanos(1));
                let full = Backoff::sdk()
                    .jitter(Jitter::Full)
                    .delay(n, Duration::ZERO, &mut rng);
                assert!(full < t || full.is_zero());
                let equal = Backoff::sdk()
                    .jitter(Jitter::Equal)
                    .delay(n, Duration::ZERO, &mut rng);
                assert!(equal >= t / 2 && equal <= t);
            }
        }
        let dec = Backoff::sdk().jitter(Jitter::Decorrelated);
        let mut prev = Duration::ZERO;
        for n in 0..200 {
            let d = dec.delay(n, prev, &mut rng);
            let upper = if prev.is_zero() { dec.base() } else { prev } * 3;
            assert!(
                d >= dec.base() && d <= upper.min(dec.max()),
                "{d:?} after {prev:?}"
            );
            prev = d;
        }
    }
}

//! A retry budget: retries may add at most a share of the request rate, plus a small floor.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How many slots the sliding window is cut into.
const SLOTS: usize = 10;

/// A retry budget shared by every service that holds a clone of it.
///
/// Every call deposits one unit; every retry withdraws one. Over a sliding `window` (default
/// 10 s) retries may number at most `ratio × calls + floor × window` (default 20 % of the calls
/// plus 10 retries per second), the design of Finagle's retry budget and tower's `TpsBudget`.
/// When every call fails, at most `calls × (1 + ratio) + floor × window` requests reach the
/// server in a window instead of `calls × attempts`: an outage cannot multiply the load.
///
/// `Budget` is a handle: clones share one budget. Give the same handle to several
/// [`Policy`](super::Policy)s to share it between separately built layers.
///
/// Time is tokio's clock. A withdrawal is final: a retry that is cancelled while it waits does
/// not give its unit back (it was the decision to retry that the budget limits).
///
/// ```
/// use std::time::Duration;
/// use tower_llm_limits::retry::Budget;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let budget = Budget::new(Duration::from_secs(10), 0, 0.5);
/// budget.deposit();
/// budget.deposit();
/// assert!(budget.withdraw());  // 2 calls × 50 % = 1 retry
/// assert!(!budget.withdraw());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Budget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    window: Duration,
    slot: Duration,
    reserve: u64,
    ratio: f64,
    start: Instant,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Index (in slots since `start`) of the newest slot written.
    newest: u64,
    deposits: [u64; SLOTS],
    withdrawals: [u64; SLOTS],
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(Duration::from_secs(10), 10, 0.2)
    }
}

impl Budget {
    /// A budget over a sliding `window` that allows `floor_per_sec` retries per second whatever
    /// the traffic, plus `ratio` retries per call (0.2 = 20 %). The default is
    /// `Budget::new(Duration::from_secs(10), 10, 0.2)`.
    ///
    /// # Panics
    ///
    /// When `window` is zero or `ratio` is negative or not finite.
    pub fn new(window: Duration, floor_per_sec: u32, ratio: f64) -> Self {
        assert!(!window.is_zero(), "retry budget window must be positive");
        assert!(
            ratio.is_finite() && ratio >= 0.0,
            "retry budget ratio must be a finite number >= 0"
        );
        let reserve = (window.as_secs_f64() * f64::from(floor_per_sec)).floor() as u64;
        Budget {
            shared: Arc::new(Shared {
                window,
                slot: window / SLOTS as u32,
                reserve,
                ratio,
                start: Instant::now(),
                state: Mutex::new(State {
                    newest: 0,
                    deposits: [0; SLOTS],
                    withdrawals: [0; SLOTS],
                }),
            }),
        }
    }

    /// The sliding window.
    pub fn window(&self) -> Duration {
        self.shared.window
    }

    /// Records a call (a first attempt).
    pub fn deposit(&self) {
        self.shared
            .with_state(|state, slot| state.deposits[slot] += 1);
    }

    /// Takes one retry out of the budget; `false` (and nothing taken) when it is exhausted.
    pub fn withdraw(&self) -> bool {
        let shared = &self.shared;
        shared.with_state(|state, slot| {
            if shared.available(state) >= 1 {
                state.withdrawals[slot] += 1;
                true
            } else {
                false
            }
        })
    }

    /// How many retries the budget would allow now.
    pub fn available(&self) -> u64 {
        let shared = &self.shared;
        shared.with_state(|state, _| shared.available(state))
    }

    /// `true` when `self` and `other` are handles to the same budget.
    pub fn ptr_eq(&self, other: &Budget) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Shared {
    /// Runs `f` on the state after expiring slots older than the window; `f` gets the index of
    /// the current slot.
    fn with_state<T>(&self, f: impl FnOnce(&mut State, usize) -> T) -> T {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        let now = if self.slot.is_zero() {
            0
        } else {
            (elapsed.as_nanos() / self.slot.as_nanos()) as u64
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now > state.newest {
            let stale = (now - state.newest).min(SLOTS as u64);
            for i in 1..=stale {
                let idx = ((state.newest + i) % SLOTS as u64) as usize;
                state.deposits[idx] = 0;
                state.withdrawals[idx] = 0;
            }
            state.newest = now;
        }
        f(&mut state, (now % SLOTS as u64) as usize)
    }

    fn available(&self, state: &State) -> u64 {
        let deposits: u64 = state.deposits.iter().sum();
        let withdrawals: u64 = state.withdrawals.iter().sum();
        let allowed = self.reserve + (deposits as f64 * self.ratio).floor() as u64;
        allowed.saturating_sub(withdrawals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn floor_and_ratio() {
        let b = Budget::new(Duration::from_secs(10), 1, 0.2);
        assert_eq!(b.available(), 10);
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(b.available(), 12);
        for _ in 0..12 {
            assert!(b.withdraw());
        }
        assert!(!b.withdraw());
        // The window slides: after it has fully passed, everything is forgotten.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.available(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn slots_expire_one_by_one() {
        let b = Budget::new(Duration::from_secs(10), 0, 1.0);
        b.deposit();
        tokio::time::advance(Duration::from_secs(5)).await;
        b.deposit();
        assert_eq!(b.available(), 2);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.available(), 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.available(), 0);
    }
}

//! The shared state of a concurrency cap: a limit, the permits in flight and a FIFO queue of
//! waiters.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A handle on one concurrency cap, shared by every service it is given to.
///
/// Cloning a `Limiter` clones the handle, not the cap: all clones (and all services built with
/// them) draw permits from the same pool. Build it once per provider/organisation and give it to
/// every service that talks to it, with
/// [`ConcurrencyLimitLayer::shared`](super::ConcurrencyLimitLayer::shared) or
/// [`ConcurrencyLimit::with_limiter`](super::ConcurrencyLimit::with_limiter).
///
/// Waiters are served strictly in arrival order: a permit released while somebody waits is handed
/// to the oldest waiter (and its task woken) before any newcomer may take it, so no caller can
/// overtake another and nobody starves.
///
/// The limit can be changed at run time with [`set_limit`](Self::set_limit). Raising it admits
/// waiters at once; lowering it takes nothing away from the calls in flight, it only admits no
/// one until fewer than the new limit are in flight. A limit of 0 admits nothing (a pause).
///
/// # Examples
///
/// ```
/// use tower_llm_limits::concurrency::Limiter;
///
/// let limiter = Limiter::new(8);
/// assert_eq!(limiter.limit(), 8);
/// assert_eq!(limiter.in_flight(), 0);
/// limiter.set_limit(4);
/// assert_eq!(limiter.available(), 4);
/// ```
#[derive(Clone)]
pub struct Limiter {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
}

struct State {
    limit: usize,
    in_flight: usize,
    /// Ids of the waiters not granted yet, oldest first.
    queue: VecDeque<u64>,
    /// Every registered waiter, granted or not.
    waiters: HashMap<u64, Waiter>,
    next_id: u64,
}

struct Waiter {
    waker: Waker,
    /// A permit was handed to this waiter (and counted in `in_flight`); it takes it on its next
    /// poll.
    granted: bool,
}

impl State {
    /// Hands free permits to the oldest waiters; returns the wakers to call once the lock is
    /// released.
    fn dispatch(&mut self) -> Vec<Waker> {
        let mut wake = Vec::new();
        while self.in_flight < self.limit {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            if let Some(waiter) = self.waiters.get_mut(&id) {
                waiter.granted = true;
                self.in_flight += 1;
                wake.push(waiter.waker.clone());
            }
        }
        wake
    }
}

fn wake_all(wakers: Vec<Waker>) {
    for waker in wakers {
        waker.wake();
    }
}

impl Limiter {
    /// A cap admitting at most `limit` calls at a time. A limit of 0 admits nothing until it is
    /// raised with [`set_limit`](Self::set_limit).
    pub fn new(limit: usize) -> Self {
        Limiter {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    limit,
                    in_flight: 0,
                    queue: VecDeque::new(),
                    waiters: HashMap::new(),
                    next_id: 0,
                }),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// How many permits are held: calls in flight (including streaming bodies still holding
    /// their permit) and services that were polled ready but not called yet.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// How many services wait for a permit.
    pub fn waiting(&self) -> usize {
        self.lock().queue.len()
    }

    /// How many permits could be taken right now (0 when the cap is full or above a lowered
    /// limit).
    pub fn available(&self) -> usize {
        let state = self.lock();
        state.limit.saturating_sub(state.in_flight)
    }

    /// Changes the limit. Raising it wakes as many waiters as it admits, oldest first; lowering
    /// it lets the calls in flight finish and admits nobody until fewer than `limit` are in
    /// flight.
    pub fn set_limit(&self, limit: usize) {
        let wake = {
            let mut state = self.lock();
            state.limit = limit;
            state.dispatch()
        };
        wake_all(wake);
    }

    /// `true` when both handles refer to the same cap.
    pub fn same_as(&self, other: &Limiter) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Takes a permit, or queues the caller (registering `cx`'s waker) and remembers its place in
    /// `ticket`. Call again with the same `ticket` until it returns `Ready`.
    pub(crate) fn poll_acquire(
        &self,
        cx: &mut Context<'_>,
        ticket: &mut Option<Ticket>,
    ) -> Poll<Permit> {
        let mut state = self.lock();
        match ticket {
            Some(t) => {
                debug_assert!(Arc::ptr_eq(&t.shared, &self.shared));
                match state.waiters.get_mut(&t.id) {
                    Some(waiter) if waiter.granted => {
                        state.waiters.remove(&t.id);
                        drop(state);
                        // The waiter is gone: dropping the ticket is a no-op.
                        *ticket = None;
                        Poll::Ready(self.permit())
                    }
                    Some(waiter) => {
                        if !waiter.waker.will_wake(cx.waker()) {
                            waiter.waker = cx.waker().clone();
                        }
                        Poll::Pending
                    }
                    None => unreachable!("a live ticket is always registered"),
                }
            }
            None => {
                if state.queue.is_empty() && state.in_flight < state.limit {
                    state.in_flight += 1;
                    drop(state);
                    return Poll::Ready(self.permit());
                }
                let id = state.next_id;
                state.next_id += 1;
                state.queue.push_back(id);
                state.waiters.insert(
                    id,
                    Waiter {
                        waker: cx.waker().clone(),
                        granted: false,
                    },
                );
                drop(state);
                *ticket = Some(Ticket {
                    shared: self.shared.clone(),
                    id,
                });
                Poll::Pending
            }
        }
    }

    /// A permit for a slot already counted in `in_flight`.
    fn permit(&self) -> Permit {
        Permit {
            shared: self.shared.clone(),
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // The state is kept consistent at every await-free step, so a poisoned lock (a panic in a
    // waker) leaves it usable.
    shared
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Limiter")
            .field("limit", &state.limit)
            .field("in_flight", &state.in_flight)
            .field("waiting", &state.queue.len())
            .finish()
    }
}

/// One slot of a [`Limiter`]; dropping it gives the slot back and admits the oldest waiter.
pub(crate) struct Permit {
    shared: Arc<Shared>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let wake = {
            let mut state = lock(&self.shared);
            state.in_flight -= 1;
            state.dispatch()
        };
        wake_all(wake);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

/// A place in a [`Limiter`]'s queue; dropping it leaves the queue (and gives back a permit that
/// was granted to it but not taken yet).
pub(crate) struct Ticket {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let wake = {
            let mut state = lock(&self.shared);
            match state.waiters.remove(&self.id) {
                Some(waiter) if waiter.granted => {
                    state.in_flight -= 1;
                    state.dispatch()
                }
                Some(_) => {
                    let id = self.id;
                    state.queue.retain(|&queued| queued != id);
                    Vec::new()
                }
                None => Vec::new(),
            }
        };
        wake_all(wake);
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket").field("id", &self.id).finish()
    }
}

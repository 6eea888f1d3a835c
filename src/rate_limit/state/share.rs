//! What a key learned, through its store: published after every answer, adopted before every
//! decision (see [`Store`]). With the [`MemoryStore`] nothing comes back: the key's own copy is
//! the model.

use super::*;

impl KeyState {
    /// What the key has learned, as of `now`.
    pub(super) fn learned_model(&self, now: Instant) -> Learned {
        Learned {
            limits: self.learned,
            cooldown_until: self.cooldown_until.filter(|c| *c > now),
            margins: self.margin.each_ref().map(|m| m.share_at(now)),
            input: (self.input.samples() > 0).then(|| self.input.estimate()),
            output: (self.output.samples() > 0).then(|| self.output.estimate()),
            throttle_rate: self.throttle.as_ref().map(|t| t.rate(now)),
            output_counted_as_produced: self.accounting.counting.as_produced(),
        }
    }

    /// Hands what the key learned to its store.
    pub(super) fn publish(&mut self, now: Instant) {
        let learned = self.learned_model(now);
        self.buckets.set_learned(&learned);
    }

    /// Adopts what the store brings from other processes: the server's limits (a process
    /// joining paces from its first request), the fleet's cooldown (set by a refusal anywhere,
    /// ended by a re-check answered anywhere), larger margins, how the server counts (input and
    /// output ratios, and the output accounting another process proved while this one has no
    /// proof), the throttle rate.
    pub(super) fn adopt(&mut self, key: &RateLimitKey, now: Instant) {
        let demand = self.queue.len() + self.in_flight;
        self.buckets.demand(demand);
        let Some(l) = self.buckets.learned() else {
            return;
        };
        for d in Dimension::ALL {
            let i = d.index();
            if let Some((limit, window)) = l.limits[i]
                && limit > 0
                && limit <= MAX_PLAUSIBLE_LIMIT
                && !window.is_zero()
                && self.learned[i] != Some((limit, window))
            {
                tracing::debug!(key = %key, dimension = d.as_str(), old = ?self.learned[i].map(|l| l.0),
                    new = limit, "rate limit: limit adopted from the store");
                self.learned[i] = Some((limit, window));
                self.learned_at[i] = Some(now);
                // A store that shares limits brings its buckets with them; one that does not
                // gets a bucket of the limit, as a first reading would make.
                if self.buckets.get(d).is_none()
                    && let Some((cap, window)) = self.capacity(d)
                {
                    self.buckets.set(d, Some(Bucket::new(cap, window, now)));
                }
            }
            self.margin[i].adopt(l.margins[i], now);
        }
        match l.cooldown_until.filter(|c| *c > now) {
            Some(until) if self.cooldown_until.is_none_or(|c| c < until) => {
                self.cooldown_until = Some(until);
                self.cooldown_seq = self.dispatch_seq;
                self.cooldown_set = Some(now);
                tracing::info!(key = %key,
                    cooldown_ms = until.saturating_duration_since(now).as_millis() as u64,
                    "rate limit: cooldown set by another process, honoured here");
            }
            None if self.cooldown_until.is_some_and(|c| c > now) => {
                tracing::info!(key = %key, "rate limit: cooldown ended by another process");
                self.cooldown_until = None;
            }
            _ => {}
        }
        if let Some(e) = l.input {
            self.input.adopt(e);
        }
        if let Some(e) = l.output {
            self.output.adopt(e);
        }
        if self.accounting.counting == OutputCounting::Unknown {
            self.accounting.counting = OutputCounting::proved(l.output_counted_as_produced);
        }
        if let Some(rate) = l.throttle_rate.filter(|r| r.is_finite() && *r > 0.0) {
            let known = self.throttle.as_ref().map(|t| t.rate(now));
            if known.is_none_or(|k| (k - rate).abs() > 0.01 * rate) {
                // This key's own spacing is kept: its next slot does not move.
                let next_at = self.throttle.as_ref().map_or(now, Throttle::ready_at);
                self.throttle = Some(Throttle::adopted(rate, self.dispatch_seq, next_at, now));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::store::Estimate;

    /// A store whose keys publish to one board and adopt what a test posts on it: two states
    /// with it stand for two processes of a fleet.
    #[derive(Clone, Debug, Default)]
    struct Board(Arc<Mutex<BoardInner>>);

    #[derive(Debug, Default)]
    struct BoardInner {
        published: Vec<Learned>,
        post: Option<Learned>,
    }

    impl Store for Board {
        fn open(&self, _key: &RateLimitKey) -> Box<dyn Buckets> {
            Box::new(BoardBuckets {
                buckets: [None; 4],
                board: self.clone(),
            })
        }
    }

    #[derive(Debug)]
    struct BoardBuckets {
        buckets: [Option<Bucket>; 4],
        board: Board,
    }

    impl Buckets for BoardBuckets {
        fn get(&self, d: Dimension) -> Option<Bucket> {
            self.buckets[d.index()]
        }
        fn set(&mut self, d: Dimension, b: Option<Bucket>) {
            self.buckets[d.index()] = b;
        }
        fn set_learned(&mut self, learned: &Learned) {
            lock(&self.board.0).published.push(learned.clone());
        }
        fn learned(&mut self) -> Option<Learned> {
            lock(&self.board.0).post.take()
        }
    }

    fn key() -> RateLimitKey {
        RateLimitKey::global()
    }

    fn enter(state: &RateLimitState) -> Ticket {
        state
            .enter(
                &key(),
                Cost::new(1, 100, 100),
                false,
                Priority::Interactive,
                None,
                None,
            )
            .unwrap()
    }

    /// What one process learns (a limit, a cooldown, how the server counts) is published; a
    /// second process adopts it before its first request: it paces on the limit and honours the
    /// cooldown without sending anything.
    #[tokio::test(start_paused = true)]
    async fn a_second_process_adopts_limits_cooldown_and_ratios() {
        let board = Board::default();
        let a = RateLimitState::builder().store(board.clone()).build();
        let mut t = enter(&a);
        assert!(t.is_admitted());
        t.dispatched();
        let snapshot = RateLimitSnapshot::new()
            .with_dialect(Dialect::Anthropic)
            .with(
                Dimension::Requests,
                BucketReading::new(Some(50), Some(0), Some(Duration::from_secs(60))),
            );
        let outcome =
            Outcome::new(OutcomeKind::RateLimited).with_retry_after(Some(Duration::from_secs(5)));
        t.complete_with(Reply {
            snapshot: &snapshot,
            outcome: &outcome,
            received: Instant::now(),
            usage: None,
            input: None,
            streaming: false,
        });
        let published = lock(&board.0).published.last().cloned().expect("published");
        assert_eq!(
            published.limits[Dimension::Requests.index()],
            Some((50, Duration::from_secs(60)))
        );
        let until = published.cooldown_until.expect("the cooldown is published");
        assert_eq!(until, Instant::now() + Duration::from_secs(5));

        let b = RateLimitState::builder().store(board.clone()).build();
        let mut post = published.clone();
        post.input = Some(Estimate {
            log_mean: 1.5f64.ln(),
            log_var: 0.0,
            samples: 20,
        });
        assert_eq!(
            published.output_counted_as_produced, None,
            "nothing proved yet"
        );
        // Another process proved output counted as produced.
        post.output_counted_as_produced = Some(true);
        lock(&board.0).post = Some(post);
        let waiting = enter(&b);
        assert!(
            !waiting.is_admitted(),
            "the fleet's cooldown holds the request"
        );
        let snap = b.key_snapshot(&key()).unwrap();
        assert_eq!(snap.cooldown_until(), Some(until));
        assert_eq!(
            snap.bucket(Dimension::Requests).map(|b| b.learned()),
            Some(Some(50))
        );
        assert!((snap.input_correction() - 1.5).abs() < 1e-9);
        assert_eq!(snap.output_counted_as_produced(), Some(true));
        drop(waiting);
        // Another process's re-check was answered: the fleet's cooldown ended.
        let mut ended = published;
        ended.cooldown_until = None;
        lock(&board.0).post = Some(ended);
        let t = enter(&b);
        assert!(t.is_admitted(), "the ended cooldown no longer holds");
    }

    /// With the memory store nothing comes back: a key's model is its own.
    #[tokio::test(start_paused = true)]
    async fn the_memory_store_brings_nothing() {
        let state = RateLimitState::new();
        let mut t = enter(&state);
        t.dispatched();
        let cell = state.cell(&key());
        let mut st = lock(&cell.state);
        assert!(st.buckets.learned().is_none());
        assert!(st.buckets.loading(Instant::now()).is_none());
    }
}

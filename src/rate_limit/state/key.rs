//! One key's state: buckets, the queue, admission and in-flight accounting.

use super::*;

pub(crate) struct KeyCell {
    pub(super) key: RateLimitKey,
    pub(super) last_used: AtomicU64,
    pub(super) state: Mutex<KeyState>,
}

impl KeyCell {
    /// The usage of the answer to the request dispatched at `seq` arrived with its body.
    pub(super) fn usage(&self, seq: u64, usage: Usage) {
        let now = Instant::now();
        let mut st = lock(&self.state);
        if let Some(a) = st.awaiting_usage.remove(&seq) {
            st.settle_usage(&self.key, a, usage, now);
            st.publish(now);
            st.wake_head();
        }
    }

    /// The input usage of the request dispatched at `seq` arrived before its output: settled
    /// now when its head was answered, else kept in `early` for the head's answer (under the
    /// key's lock, so that the two cannot miss each other).
    pub(super) fn input_usage(&self, seq: u64, input: u64, early: &Mutex<Option<u64>>) {
        let now = Instant::now();
        let mut st = lock(&self.state);
        match st.awaiting_usage.get(&seq).copied() {
            Some(mut a) => {
                st.settle_input(&self.key, &mut a, input, now);
                st.awaiting_usage.insert(seq, a);
                st.publish(now);
                st.wake_head();
            }
            None => *lock(early) = Some(input),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Probe {
    /// Nothing known, no probe out: the next request probes.
    Idle,
    /// Requests are out to learn the limits (at most [`STARTUP_PROBES`]); the others wait for
    /// the first answer.
    InFlight,
    /// Responses carry no rate-limit headers and nothing is configured: not limited.
    Unlimited,
}

pub(super) struct Waiter {
    pub(super) charge: Charge,
    pub(super) waker: Option<Waker>,
}

/// An output reading, for [`KeyState::learn_output_share`]: the server's `full_at` and the
/// finished output (known, and reserved but unknown) before the request was sent.
#[derive(Clone, Copy, Debug)]
pub(super) struct OutputAnchor {
    pub(super) full_at: Instant,
    pub(super) known: u64,
    pub(super) unknown: u64,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Anchor {
    pub(super) full_at: Instant,
    pub(super) raw_after: u64,
}

pub(super) struct KeyState {
    pub(super) buckets: Box<dyn Buckets>,
    pub(super) configured: [Option<u64>; 4],
    pub(super) window: Duration,
    pub(super) learned: [Option<(u64, Duration)>; 4],
    /// The server's own bucket, per dimension, while a configured ceiling is below the limit it
    /// reports: the ceiling (in `buckets`) counts this key's own usage at the configured rate,
    /// this one the server's level at the server's rate, corrected from its readings. A request
    /// must fit both.
    pub(super) server: [Option<Bucket>; 4],
    pub(super) probe: Probe,
    /// Probes in flight.
    pub(super) probes: usize,
    pub(super) cooldown_until: Option<Instant>,
    /// The charge of requests admitted and not yet sent (a concurrency cap below may hold them
    /// for a while): no reading, whenever taken, contains it.
    pub(super) pending: Charge,
    /// Cumulative charge at dispatch, per dimension (monotone).
    pub(super) dispatched: Charge,
    /// Dispatches so far: the position of each request in dispatch order.
    pub(super) dispatch_seq: u64,
    /// Requests charged in `dispatched` and then given back (refused with a 429, or admitted
    /// but never sent), with their dispatch position: a reading must not count them as charged
    /// after it. The most recent [`MAX_REFUNDS`] are kept.
    pub(super) refunds: VecDeque<(u64, Charge)>,
    /// Cumulative raw (uncorrected) input estimate at dispatch.
    pub(super) raw_input: u64,
    /// Output reserved by requests in flight.
    pub(super) outstanding_output: u64,
    /// Cumulative output of finished requests as their heads settled it (their true output when
    /// known, else their reservation): what a server counting output as produced may have
    /// charged since. When a body's `usage` shows less, the difference goes to
    /// `output_given_back` instead, so that a reading never counts a settled figure twice.
    pub(super) completed_output: u64,
    /// Finished requests so far: each one's place in the order of completion.
    pub(super) completions: u64,
    /// What later `usage` showed finished requests did not produce of what their heads
    /// settled, by their place in the order of completion (the latest [`MAX_REFUNDS`]).
    pub(super) output_given_back: VecDeque<(u64, u64)>,
    /// Cumulative true output of finished requests whose output is known (a [`Usage`], or
    /// refused: none).
    pub(super) known_output: u64,
    /// Cumulative reservation of finished requests whose output is unknown.
    pub(super) unknown_reserved: u64,
    /// The share of its `max_tokens` a request produces (1.0 until learned), from `usage` or,
    /// while no answer carried one, from successive output readings: a finished request whose
    /// output is unknown is taken to have charged its high quantile.
    pub(super) output: Ratio,
    /// How the server charges output (`max_tokens` at admission, or as produced), learned.
    pub(super) accounting: Accounting,
    pub(super) output_anchor: Option<OutputAnchor>,
    pub(super) in_flight: usize,
    pub(super) queue: BTreeMap<(usize, u64), Waiter>,
    /// Queued charge per priority class.
    pub(super) queued: [Charge; 2],
    /// What the server charges for input ÷ the raw estimate (1.0 until learned), from `usage`
    /// or, while no answer carried one, from successive input readings. Reservations take its
    /// high quantile.
    pub(super) input: Ratio,
    /// Whether an answer of this key ever carried a `usage` (then the readings no longer feed
    /// the ratios: usage is exact, readings are coarse).
    pub(super) usage_seen: bool,
    /// The last dispatch whose input charge a reading replaced with the server's count: the
    /// usage of it and of every earlier one no longer adjusts the input bucket.
    pub(super) input_read_through: u64,
    /// Answered requests whose `usage` may still come with the body (by dispatch position).
    pub(super) awaiting_usage: BTreeMap<u64, Awaiting>,
    /// What each request whose input is not settled yet reserved beyond its expected charge
    /// (the high quantile of the input ratio over its mean), by dispatch position: the model
    /// holds it, the server never charged it. The readings are compared with the model less it.
    pub(super) cushions: BTreeMap<u64, u64>,
    /// The share of each bucket's refill other clients of the organisation take, learned from
    /// the readings, and charged to the local bucket as it accrues.
    pub(super) others: [Others; 4],
    /// Whether the buckets are shared with other processes (see [`Store::is_shared`]).
    pub(super) shared_store: bool,
    /// Units kept free per dimension since the server refused what the model said would fit.
    pub(super) margin: [Margin; 4],
    /// Dispatches before the last raise of a margin: a refusal of one of them is the same
    /// episode and raises nothing again.
    pub(super) tightened_seq: u64,
    /// The request rate learned from throttles, for a key without rate-limit headers.
    pub(super) throttle: Option<Throttle>,
    /// Recent sends (dispatches), to measure the sending rate when a throttle comes.
    pub(super) sends: Recent,
    /// Requests admitted and not yet sent (a concurrency cap below holds them).
    pub(super) held: usize,
    /// When the server accepted this key's requests lately.
    pub(super) accepted: Recent,
    /// Dispatches before the current cooldown was set: an answer to a later one (the
    /// re-check) ends the cooldown.
    pub(super) cooldown_seq: u64,
    /// When the current cooldown was set.
    pub(super) cooldown_set: Option<Instant>,
    /// When the last re-check request went (see [`RECHECK_INTERVAL`]).
    pub(super) last_recheck: Option<Instant>,
    /// When each dimension's limit was last read from the server.
    pub(super) learned_at: [Option<Instant>; 4],
    pub(super) anchor: Option<Anchor>,
    pub(super) ramp: Option<RampUp>,
    pub(super) ramp_from: Option<Instant>,
    pub(super) last_admit: Option<Instant>,
    pub(super) cooldown_without_hint: Duration,
}

pub(crate) enum Check {
    Fits,
    Until(Instant),
    /// Waits to be woken, at no known instant: by a probe's answer, by the send of a request
    /// admitted before (a key paced on sends), or by its turn at the head of the queue.
    Wake,
    Never(CostExceedsLimit),
}

/// What a response says, as the limiter reads it.
pub(super) struct Reply<'a> {
    pub(super) snapshot: &'a RateLimitSnapshot,
    pub(super) outcome: &'a Outcome,
    pub(super) received: Instant,
    pub(super) usage: Option<Usage>,
    /// The input usage alone, reported before the head was answered (a stream's
    /// `message_start`).
    pub(super) input: Option<u64>,
    /// The answer is an event stream: its head came before the model produced anything.
    pub(super) streaming: bool,
}

/// How many given-back requests a key remembers for [`KeyState::refunded_after`].
pub(super) const MAX_REFUNDS: usize = 256;

/// What a dispatched request charged, and the counters right after its dispatch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    pub(super) seq: u64,
    pub(super) charge: Charge,
    pub(super) after: Charge,
    pub(super) raw_after: u64,
    pub(super) completed_before: u64,
    /// Requests finished before this one was dispatched.
    pub(super) completions_before: u64,
    pub(super) known_before: u64,
    pub(super) unknown_before: u64,
    pub(super) at: Instant,
    pub(super) probe: bool,
    /// The raw input estimate of this request (before the learned ratio).
    pub(super) raw: u64,
    /// Whether the caller gave the cost (then it is not an estimate to learn from).
    pub(super) exact: bool,
    /// The request's `max_tokens` (its output charge is [`KeyState::reservation`] of it).
    pub(super) max_output: u64,
    /// What each accounting shadow had used right after this request was sent.
    pub(super) shadow_used: [Option<u64>; 4],
}

impl Record {
    /// The charge with the output at the request's `max_tokens`.
    pub(super) fn nominal(&self) -> Charge {
        let mut c = self.charge;
        c[OUT] = self.max_output;
        c[TOK] = c[TOK]
            .saturating_sub(self.charge[OUT])
            .saturating_add(self.max_output);
        c
    }
}

/// An answered request whose body may still bring its `usage`: what its head settled.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Awaiting {
    pub(super) seq: u64,
    pub(super) input_charged: u64,
    pub(super) raw: u64,
    pub(super) exact: bool,
    pub(super) output_settled: u64,
    /// Its place in the order of completion.
    pub(super) completion: u64,
    pub(super) max_output: u64,
    /// Whether the input usage already settled the input (and taught the input ratio).
    pub(super) input_settled: bool,
}

impl KeyState {
    pub(super) fn charge_of(&self, cost: Cost, exact: bool) -> (Charge, u64) {
        let raw = cost.input_tokens();
        let input = if exact {
            raw
        } else {
            let x = (raw as f64 * self.input.high()).ceil();
            if x >= u64::MAX as f64 {
                u64::MAX
            } else {
                x as u64
            }
        };
        let out = cost.output_tokens();
        (
            [cost.requests(), input, out, input.saturating_add(out)],
            raw,
        )
    }

    pub(super) fn capacity(&self, d: Dimension) -> Option<(u64, Duration)> {
        let i = d.index();
        match (self.configured[i], self.learned[i]) {
            (Some(c), Some((l, w))) => Some((c.min(l), if l <= c { w } else { self.window })),
            (Some(c), None) => Some((c, self.window)),
            (None, Some(l)) => Some(l),
            (None, None) => None,
        }
    }

    /// What a wait is for, for the traces: a dimension, the cooldown or the start-up probe.
    pub(super) fn reason(&self, dimension: Option<Dimension>) -> &'static str {
        match dimension {
            Some(d) => d.as_str(),
            None if self.probing() => "probe",
            None => "cooldown",
        }
    }

    /// A key paced on its throttle rate counts sends, not admissions: while a request admitted
    /// earlier is still held by a layer below (a concurrency cap), the next waits for it to go
    /// (its send wakes the queue; a caller's `max_wait` still bounds the wait).
    pub(super) fn held_back(&self) -> bool {
        self.paced_on_throttles()
            && (self.held > 0
                || self
                    .throttle
                    .as_ref()
                    .is_some_and(|t| t.window_full(self.in_flight)))
    }

    /// Whether the key is paced on a rate learned from throttles (no rate-limit headers).
    pub(super) fn paced_on_throttles(&self) -> bool {
        self.throttle.is_some() && !self.any_bucket()
    }

    /// Nothing known and every start-up probe out: wait for the first answer.
    pub(super) fn probing(&self) -> bool {
        self.probe == Probe::InFlight && self.probes >= STARTUP_PROBES && !self.any_bucket()
    }

    /// A probe ended (answered, failed or dropped).
    pub(super) fn probe_done(&mut self) {
        self.probes = self.probes.saturating_sub(1);
        if self.probes == 0 && self.probe == Probe::InFlight {
            self.probe = Probe::Idle;
        }
    }

    pub(super) fn any_bucket(&self) -> bool {
        Dimension::ALL
            .iter()
            .any(|d| self.buckets.get(*d).is_some())
    }

    pub(super) fn usable(&self, capacity: u64, now: Instant) -> u64 {
        match (self.ramp, self.ramp_from) {
            (Some(r), Some(from)) => {
                let share = r.share(now.saturating_duration_since(from));
                ((capacity as f64 * share).ceil() as u64).clamp(1, capacity.max(1))
            }
            _ => capacity,
        }
    }

    pub(super) fn ramp_end(&self) -> Option<Instant> {
        Some(add(self.ramp_from?, self.ramp?.period()))
    }

    pub(super) fn check(&self, charge: &Charge, now: Instant) -> Check {
        let reserved = self.reservation(charge);
        for d in Dimension::ALL {
            if let Some(b) = self.buckets.get(d)
                && reserved[d.index()] > b.capacity()
                && !self.recheck_limit(d, now)
            {
                return Check::Never(CostExceedsLimit::new(d, reserved[d.index()], b.capacity()));
            }
        }
        if self.probing() || self.held_back() {
            return Check::Wake;
        }
        let (at, _) = self.ready_at(charge, None, now);
        if at > now {
            Check::Until(at)
        } else {
            Check::Fits
        }
    }

    /// Whether a request larger than `d`'s capacity may go to ask the server again: the
    /// capacity is the server's (no configured limit below it), it was last read at least
    /// [`RECHECK_INTERVAL`] ago, and no re-check went within that interval. A tier upgrade the
    /// limiter never saw, or a reading of an absurdly low limit, then cannot stop the key for
    /// more than an interval.
    pub(super) fn recheck_limit(&self, d: Dimension, now: Instant) -> bool {
        let i = d.index();
        let from_server = match (self.configured[i], self.learned[i]) {
            (Some(c), Some((l, _))) => l < c,
            (None, Some(_)) => true,
            _ => false,
        };
        from_server && self.recheck_due(self.learned_at[i], now)
    }

    /// Whether a re-check may go at `now` for a condition that started at `since`.
    pub(super) fn recheck_due(&self, since: Option<Instant>, now: Instant) -> bool {
        let since = since.map_or(now, |s| s.max(self.last_recheck.unwrap_or(s)));
        now.saturating_duration_since(since) >= RECHECK_INTERVAL
    }

    /// When the current cooldown lets requests go again: its end, or one re-check request
    /// after [`RECHECK_INTERVAL`] when it is longer than that.
    pub(super) fn cooldown_end(&self, now: Instant) -> Option<Instant> {
        let until = self.cooldown_until.filter(|c| *c > now)?;
        let since = self.cooldown_set.unwrap_or(now);
        let since = since.max(self.last_recheck.unwrap_or(since));
        Some(until.min(add(since, RECHECK_INTERVAL)))
    }

    /// The instant `charge` (output at `max_tokens`) fits after `ahead` (queued charge before
    /// it) is admitted.
    pub(super) fn ready_at(
        &self,
        charge: &Charge,
        ahead: Option<&Charge>,
        now: Instant,
    ) -> (Instant, Option<Dimension>) {
        let charge = &self.reservation(charge);
        // A store still reading what the fleet knows (a process joining): nothing goes yet.
        let mut at = self.buckets.loading(now).map_or(now, |t| t.max(now));
        let mut dim = None;
        if let Some(c) = self.cooldown_end(now)
            && c > at
        {
            at = c;
        }
        if let Some(t) = &self.throttle
            && !self.any_bucket()
            && t.ready_at() > at
        {
            at = t.ready_at();
            dim = Some(Dimension::Requests);
        }
        for d in Dimension::ALL {
            let Some(mut b) = self.buckets.get(d) else {
                continue;
            };
            let i = d.index();
            if let Some(ahead) = ahead {
                b.charge(ahead[i], now);
            }
            // The cost with the margin refusals set aside, never more than the whole bucket (a
            // re-check of a limit below the cost waits for a full bucket). A shared store shows
            // this process its lease, not the server's level: a margin of the server's bucket
            // would never fit in it.
            let margin = if self.shared_store {
                0
            } else {
                self.margin[i].get(b.capacity(), now)
            };
            // Other clients take their share of the refill all the time (charged as it accrues,
            // waits are a millisecond at least): a bucket they share is never quite full, so a
            // cost of the whole bucket waits for all but a millisecond of refill, or for ever.
            let share = self.others[i].share();
            let most = if share > 0.0 {
                let ms = b.span_units(Duration::from_millis(1));
                b.capacity().saturating_sub(ms).max(1)
            } else {
                b.capacity()
            };
            let need = charge[i].saturating_add(margin).min(most);
            let t = match b.ready_at(need, self.usable(b.capacity(), now)) {
                Some(t) => t,
                // Only a ramp makes a cost that fits the capacity not fit the usable share:
                // wait for its end at the latest.
                None => self
                    .ramp_end()
                    .map_or(now, |e| e.max(b.ready_at(need, b.capacity()).unwrap_or(e))),
            };
            // Under a ceiling the server's own bucket must hold the cost too (it is larger
            // than the ceiling, so the cost always fits it eventually).
            let t = match self.server[i] {
                Some(mut s) => {
                    if let Some(ahead) = ahead {
                        s.charge(ahead[i], now);
                    }
                    let need = need.min(s.capacity());
                    s.ready_at(need, s.capacity()).map_or(t, |u| t.max(u))
                }
                None => t,
            };
            // A store that tops the bucket up in the background says when to look again.
            let t = match self.buckets.refill_at(now) {
                Some(r) if t > r => r.max(now),
                _ => t,
            };
            // Other clients take their share of the refill while this waits (it is charged as
            // it accrues): the wait is longer by that share, and never shorter than a
            // millisecond, so a waiter does not wake again and again for the last sliver.
            let t = if t > now && share > 0.0 {
                let wait = t.saturating_duration_since(now).as_secs_f64() / (1.0 - share);
                add(
                    now,
                    Duration::from_secs_f64(wait.min(1e7)).max(Duration::from_millis(1)),
                )
            } else {
                t
            };
            if t > at {
                at = t;
                dim = Some(d);
            }
        }
        (at, dim)
    }

    /// The projected admission instant of a new waiter of `class` (exact under FIFO: every
    /// waiter of the same or a higher class goes first).
    pub(super) fn project(
        &self,
        charge: &Charge,
        class: usize,
        now: Instant,
    ) -> (Instant, Option<Dimension>) {
        let mut ahead = [0u64; 4];
        for q in &self.queued[..=class] {
            for (a, c) in ahead.iter_mut().zip(q) {
                *a = a.saturating_add(*c);
            }
        }
        self.ready_at(charge, Some(&ahead), now)
    }

    pub(super) fn admit(&mut self, nominal: Charge, raw: u64, exact: bool, now: Instant) -> Record {
        let charge = self.reservation(&nominal);
        // A request that goes while a cooldown holds the key, or whose cost exceeds a limit, is
        // the re-check: the next one waits another interval.
        let cooling = self.cooldown_until.is_some_and(|c| c > now);
        let oversize = Dimension::ALL.iter().any(|d| {
            self.buckets
                .get(*d)
                .is_some_and(|b| charge[d.index()] > b.capacity())
        });
        if cooling || oversize {
            self.last_recheck = Some(now);
            tracing::info!(
                cooling,
                oversize,
                "rate limit: one request goes to ask the server again"
            );
        }
        self.held += 1;
        if let Some(r) = self.ramp
            && self
                .last_admit
                .is_none_or(|l| now.saturating_duration_since(l) >= r.idle_after())
        {
            self.ramp_from = Some(now);
        }
        self.last_admit = Some(now);
        for d in Dimension::ALL {
            if let Some(mut b) = self.buckets.get(d) {
                if d == Dimension::InputTokens && b.full_at() <= now {
                    // The bucket was full: refill was lost, successive readings would
                    // understate what the server charged in between.
                    self.anchor = None;
                }
                if d == Dimension::OutputTokens && b.full_at() <= now {
                    self.output_anchor = None;
                }
                b.charge(charge[d.index()].min(b.capacity()), now);
                self.buckets.set(d, Some(b));
            }
            if let Some(s) = &mut self.server[d.index()] {
                s.charge(charge[d.index()].min(s.capacity()), now);
            }
        }
        for (c, x) in self.dispatched.iter_mut().zip(charge) {
            *c = c.saturating_add(x);
        }
        for (p, x) in self.pending.iter_mut().zip(charge) {
            *p = p.saturating_add(x);
        }
        self.raw_input = self.raw_input.saturating_add(raw);
        self.dispatch_seq += 1;
        self.outstanding_output = self.outstanding_output.saturating_add(charge[OUT]);
        self.in_flight += 1;
        let shadow_used = self.accounting.sent(nominal[OUT], now);
        if !exact {
            let expected = (raw as f64 * self.input.mean()).round();
            let expected = if expected.is_finite() {
                expected.min(u64::MAX as f64) as u64
            } else {
                u64::MAX
            };
            if self.cushions.len() >= MAX_AWAITING {
                self.cushions.pop_first();
            }
            self.cushions
                .insert(self.dispatch_seq, charge[IN].saturating_sub(expected));
        }
        let probe = !self.any_bucket() && self.probe != Probe::Unlimited;
        if probe {
            self.probe = Probe::InFlight;
            self.probes += 1;
        }
        Record {
            seq: self.dispatch_seq,
            charge,
            after: self.dispatched,
            raw_after: self.raw_input,
            completed_before: self.completed_output,
            completions_before: self.completions,
            known_before: self.known_output,
            unknown_before: self.unknown_reserved,
            at: now,
            probe,
            raw,
            exact,
            max_output: nominal[OUT],
            shadow_used,
        }
    }

    /// Notes that `record`'s whole charge was given back, for the readings of requests
    /// dispatched before it.
    pub(super) fn note_refund(&mut self, record: &Record) {
        self.cushions.remove(&record.seq);
        if self.refunds.len() == MAX_REFUNDS {
            self.refunds.pop_front();
        }
        self.refunds.push_back((record.seq, record.charge));
    }

    /// What requests dispatched after `record` charged and then got back.
    pub(super) fn refunded_after(&self, record: &Record) -> Charge {
        let mut sum: Charge = [0; 4];
        for (_, charge) in self.refunds.iter().filter(|(seq, _)| *seq > record.seq) {
            for (s, c) in sum.iter_mut().zip(charge) {
                *s = s.saturating_add(*c);
            }
        }
        sum
    }

    pub(super) fn refund(&mut self, dims: &[usize], amounts: &Charge, now: Instant) {
        for &i in dims {
            let d = Dimension::ALL[i];
            if let Some(mut b) = self.buckets.get(d) {
                b.refund(amounts[i], now);
                self.buckets.set(d, Some(b));
            }
            if let Some(s) = &mut self.server[i] {
                s.refund(amounts[i], now);
            }
        }
    }

    /// The request is no longer in flight; the server may have charged `output` for it.
    /// Returns its place in the order of completion.
    pub(super) fn finish(&mut self, record: &Record, output: u64, now: Instant) -> u64 {
        self.accounting.ended(record.max_output, now);
        self.in_flight = self.in_flight.saturating_sub(1);
        self.outstanding_output = self.outstanding_output.saturating_sub(record.charge[OUT]);
        self.completed_output = self.completed_output.saturating_add(output);
        self.completions += 1;
        self.completions
    }

    /// The output finished requests produced since `record` was dispatched, as best known now:
    /// what their heads settled, less what their `usage` showed they did not produce.
    pub(super) fn output_completed_after(&self, record: &Record) -> u64 {
        let given_back = self
            .output_given_back
            .iter()
            .filter(|(completion, _)| *completion > record.completions_before)
            .map(|(_, back)| *back)
            .fold(0, u64::saturating_add);
        self.completed_output
            .saturating_sub(record.completed_before)
            .saturating_sub(given_back)
    }

    /// Gives back the output reserved by a request that will never report (an error, or a
    /// future dropped while the call was in flight).
    pub(super) fn release_output(&mut self, record: &Record, now: Instant) {
        self.finish(record, 0, now);
        let out = record.charge[OUT];
        self.refund(&[OUT, TOK], &[0, 0, out, out], now);
        if record.probe {
            self.probe_done();
        }
        self.wake_head();
    }

    /// Charges each bucket what other clients took of its refill since the last accrual.
    pub(super) fn accrue_others(&mut self, now: Instant) {
        for d in Dimension::ALL {
            let i = d.index();
            let Some(mut b) = self.buckets.get(d) else {
                continue;
            };
            let taken = self.others[i].accrue(b.capacity(), b.window(), now);
            if taken > 0 {
                b.charge(taken, now);
                self.buckets.set(d, Some(b));
                if let Some(s) = &mut self.server[i] {
                    s.charge(taken, now);
                }
            }
        }
    }

    /// An admitted request was sent (or will never be).
    /// An admitted request was sent (passed the layers below) at `now`: the throttle's pace
    /// counts sends, not admissions, so a concurrency cap that holds requests below does not
    /// let them pile up and go together.
    pub(super) fn sent(&mut self, record: &Record, now: Instant) {
        self.unhold(record);
        self.sends.push(now);
        if let Some(t) = &mut self.throttle {
            t.sent(now, self.sends.pace(now));
            if t.starting() && t.rate(now) >= SLOW_START_END {
                // Started slowly up to a rate no LLM API allows: the server is not limited.
                self.throttle = None;
            }
            self.wake_head();
        }
    }

    /// An admitted request is no longer held: sent, or dropped before it was.
    fn unhold(&mut self, record: &Record) {
        self.held = self.held.saturating_sub(1);
        for (p, x) in self.pending.iter_mut().zip(record.charge) {
            *p = p.saturating_sub(x);
        }
    }

    /// Gives back everything a request charged (admitted but never sent).
    pub(super) fn unadmit(&mut self, record: &Record, now: Instant) {
        self.unhold(record);
        self.finish(record, 0, now);
        self.refund(&[REQ, IN, OUT, TOK], &record.charge, now);
        self.note_refund(record);
        if record.probe {
            self.probe_done();
        }
        self.wake_head();
    }

    pub(super) fn wake_head(&mut self) {
        if let Some((_, w)) = self.queue.iter_mut().next()
            && let Some(waker) = w.waker.take()
        {
            waker.wake();
        }
    }

    pub(super) fn dequeue(&mut self, id: (usize, u64)) {
        if let Some(w) = self.queue.remove(&id) {
            for (q, c) in self.queued[id.0].iter_mut().zip(w.charge) {
                *q = q.saturating_sub(c);
            }
        }
        self.wake_head();
    }
}

//! Learning from responses: readings, usage, refusals.

use super::*;

impl KeyState {
    /// Learns from a response to a request dispatched with `record`; returns the instant a
    /// retry of it may re-enter (the cooldown it set, or its next paced slot) when the response
    /// was a 429.
    pub(super) fn complete(
        &mut self,
        key: &RateLimitKey,
        record: &Record,
        response: Reply<'_>,
    ) -> Option<Instant> {
        let now = Instant::now();
        self.adopt(key, now);
        self.accrue_others(now);
        let Reply {
            snapshot,
            outcome,
            received,
            usage,
            input,
            streaming,
        } = response;
        let limited = outcome.kind() == OutcomeKind::RateLimited;
        // Only a refusal compares the limits before and after its readings.
        let capacities_before =
            limited.then(|| Dimension::ALL.map(|d| self.capacity(d).map(|c| c.0)));
        if limited {
            // The server refused the request: it charged nothing for it.
            self.refund(&[REQ, IN, OUT, TOK], &record.charge, now);
            self.note_refund(record);
            let paced = !self.any_bucket() && snapshot.is_empty();
            if paced {
                self.throttled(key, record, now);
            }
            // A key paced by its throttle rate needs no pause on top: the rate cut is the
            // answer, and its next slot is when a retry may go.
            let hint = if paced {
                None
            } else {
                Some(self.cooldown_without_hint)
            };
            match outcome.retry_after().or(hint) {
                Some(wait) if !wait.is_zero() => {
                    let until = add(received, wait);
                    let until = self.cooldown_until.map_or(until, |c| c.max(until));
                    self.cooldown_until = Some(until);
                    self.cooldown_seq = self.dispatch_seq;
                    self.cooldown_set = Some(now);
                    tracing::info!(key = %key, wait_ms = wait.as_millis() as u64,
                        cooldown_ms = until.saturating_duration_since(now).as_millis() as u64,
                        "rate limit: 429, cooling down every request of this key");
                }
                _ => {}
            }
        } else if outcome.is_success() {
            self.accepted.push(now);
            if let Some(t) = &mut self.throttle {
                t.accepted(record.seq);
            }
        }
        if !limited
            && record.seq > self.cooldown_seq
            && self.cooldown_until.is_some_and(|c| c > now)
        {
            // The re-check was answered: the server takes requests again.
            tracing::info!(key = %key, "rate limit: the re-check was answered, cooldown ended");
            self.cooldown_until = None;
        }
        // What the server charged (or will charge) for this request's output: nothing when it
        // refused it or failed (no answer was produced), the true figure when a `Usage` says,
        // else the high quantile of the learned share of its `max_tokens` — unless the answer is
        // a stream whose output is still to come and the server may hold `max_tokens` until it
        // ends: then the reservation stays until the stream's usage settles it.
        let success = outcome.is_success();
        let reserved = record.charge[OUT];
        let max = record.max_output;
        let held = streaming && self.accounting.counting != OutputCounting::AsProduced;
        let own_output = match (success, usage) {
            (false, _) => 0,
            (true, Some(u)) => u.output_tokens().min(max),
            (true, None) if held => reserved,
            (true, None) => ((max as f64 * self.output.high()).ceil() as u64).min(max),
        };
        if !success || usage.is_some() {
            self.known_output = self.known_output.saturating_add(own_output);
        } else {
            self.unknown_reserved = self.unknown_reserved.saturating_add(max);
        }
        let completion = self.finish(record, own_output, now);
        if limited {
            if self.accounting.refused(snapshot, record) {
                tracing::info!(key = %key, counting = ?self.accounting.counting,
                    "rate limit: the refusal shows how the server counts output");
            }
        } else {
            // Settle the reservation at once, before the reading is compared (neither
            // accounting charges the unused part of `max_tokens` for long); the body's `usage`
            // or the next readings correct what this leaves.
            self.move_charge(OUT, reserved, own_output, now);
        }
        if success {
            let mut awaiting = Awaiting {
                seq: record.seq,
                input_charged: record.charge[IN],
                raw: record.raw,
                exact: record.exact,
                output_settled: own_output,
                completion,
                max_output: max,
                input_settled: false,
            };
            match usage {
                Some(u) => self.settle_usage(key, awaiting, u, now),
                None => {
                    if let Some(input) = input {
                        // A stream's `message_start`: the input is known, the output to come.
                        self.settle_input(key, &mut awaiting, input, now);
                    }
                    if self.awaiting_usage.len() >= MAX_AWAITING {
                        self.awaiting_usage.pop_first();
                    }
                    self.awaiting_usage.insert(record.seq, awaiting);
                }
            }
        }
        if snapshot.is_empty() {
            if record.probe {
                self.probe_done();
                let ok = outcome.is_success() && !self.any_bucket();
                if ok {
                    self.probe = Probe::Unlimited;
                    if self.throttle.is_none() {
                        self.throttle = Some(Throttle::slow_start(self.dispatch_seq, now));
                    }
                    tracing::debug!(key = %key,
                        "rate limit: no rate-limit headers; starting slowly until a throttle");
                }
            }
        } else {
            if record.probe {
                self.probes = self.probes.saturating_sub(1);
            }
            if self.probe != Probe::Unlimited {
                self.probe = if self.probes > 0 {
                    Probe::InFlight
                } else {
                    Probe::Idle
                };
            }
            let dialect = snapshot.dialect();
            for (d, reading) in snapshot.iter() {
                if d == Dimension::Tokens && duplicates_a_token_bucket(snapshot, reading) {
                    continue;
                }
                self.learn(
                    key,
                    d,
                    reading,
                    snapshot.undated(),
                    dialect,
                    record,
                    own_output,
                    received,
                    now,
                );
            }
        }
        if success
            && self
                .accounting
                .answered(record.max_output, self.learned.map(|l| l.map(|l| l.0)))
        {
            tracing::info!(key = %key, max_tokens = record.max_output,
                "rate limit: a max_tokens above the output limit was answered: the server counts \
                 output as produced; reserving what answers use instead of max_tokens");
        }
        // A retry of a refused request is held until the key may send again — unless the server
        // asked for longer than the re-check: then the retry honours the server's wait itself
        // (the SDKs' rule), while the key's other requests re-check.
        let absorbed = if limited {
            // Evidence: the model said it would fit, judged with what the refusal's readings
            // just taught (a limit they lowered explains the refusal).
            let before = capacities_before.unwrap_or_default();
            let lowered = Dimension::ALL.map(|d| {
                let after = self.capacity(d).map(|c| c.0);
                matches!((before[d.index()], after), (Some(b), Some(a)) if a < b)
            });
            self.tighten(key, record, snapshot, lowered, now);
            let asked = outcome.retry_after().unwrap_or_default();
            (asked <= RECHECK_INTERVAL).then(|| self.ready_at(&record.nominal(), None, now).0)
        } else {
            None
        };
        self.publish(now);
        self.wake_head();
        absorbed
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn learn(
        &mut self,
        key: &RateLimitKey,
        d: Dimension,
        reading: &BucketReading,
        snapshot_undated: bool,
        dialect: Option<Dialect>,
        record: &Record,
        own_output: u64,
        received: Instant,
        now: Instant,
    ) {
        let i = d.index();
        // Implausible readings are dropped, each field on its own: a limit of 0 (it would stop
        // the key until a re-check; a server that really allows nothing refuses, and its 429s
        // pause the key), a remaining above the limit, a reset beyond the bucket's window (a
        // per-minute bucket is full within a minute; years ahead means a broken `date`).
        let limit = reading
            .limit()
            .filter(|l| *l > 0 && *l <= MAX_PLAUSIBLE_LIMIT);
        if reading.limit().is_some() && limit.is_none() {
            tracing::debug!(key = %key, dimension = d.as_str(), limit = ?reading.limit(),
                "rate limit: ignored an implausible limit");
        }
        if let Some(limit) = limit {
            let window = reading.window().unwrap_or(self.window);
            self.learned_at[i] = Some(now);
            if self.learned[i] != Some((limit, window)) {
                tracing::info!(key = %key, dimension = d.as_str(), old = ?self.learned[i].map(|l| l.0),
                    new = limit, window_s = window.as_secs_f64(), "rate limit: limit learned");
                self.learned[i] = Some((limit, window));
            }
        }
        let Some((cap, window)) = self.capacity(d) else {
            return;
        };
        // A bucket created by this reading holds none of what was sent before: the reading is
        // all there is.
        let created = self.buckets.get(d).is_none();
        let b = match self.buckets.get(d) {
            Some(mut b) => {
                if (b.capacity(), b.window()) != (cap, window) {
                    b.resize(cap, window, now);
                }
                b
            }
            None => Bucket::new(cap, window, now),
        };
        // The server's `full_at`, as an interval of local instants, from each reading.
        let server_cap = self.learned[i].map_or(cap, |l| l.0);
        let server_window = self.learned[i].map_or(window, |l| l.1);
        let server = Bucket::new(server_cap, server_window, now);
        // The bucket the reading corrects: the local one, or under a configured ceiling below
        // the server's limit the server's own bucket. The ceiling counts this key's own usage at
        // the configured rate; the server's units used (everyone's, refilled at the server's
        // rate) say nothing about it, and converting them into the smaller bucket turned a
        // nearly empty server bucket into a wait of many minutes.
        let ceiling = cap < server_cap;
        let mut target = if ceiling {
            match self.server[i] {
                Some(mut s) => {
                    if (s.capacity(), s.window()) != (server_cap, server_window) {
                        s.resize(server_cap, server_window, now);
                    }
                    s
                }
                None => server,
            }
        } else {
            self.server[i] = None;
            b
        };
        self.buckets.set(d, Some(b));
        let remaining = reading.remaining().filter(|r| *r <= server_cap);
        let full_at_reset = matches!(dialect, Some(Dialect::Anthropic) | Some(Dialect::OpenAi));
        let reset = reading
            .reset()
            .filter(|_| full_at_reset)
            .filter(|r| *r <= server_window.saturating_add(RESET_SLACK));
        if reading.remaining().is_some() != remaining.is_some()
            || (full_at_reset && reading.reset().is_some() != reset.is_some())
        {
            tracing::debug!(key = %key, dimension = d.as_str(), remaining = ?reading.remaining(),
                reset = ?reading.reset(), "rate limit: ignored an implausible reading");
        }
        let dispatched = record.at.min(received);
        // Anthropic rounds token counts to the nearest thousand.
        let tol = if dialect == Some(Dialect::Anthropic) && d != Dimension::Requests {
            TOKENS_REMAINING_TOLERANCE
        } else {
            0
        };
        if matches!(d, Dimension::OutputTokens | Dimension::Tokens)
            && let Some(r) = remaining
        {
            let used = server_cap.saturating_sub(r);
            let at_dispatch = record.shadow_used[i];
            if self
                .accounting
                .reading(i, server_cap, server_window, used, tol, at_dispatch, now)
            {
                tracing::info!(key = %key, dimension = d.as_str(), server_remaining = r,
                    "rate limit: the server counts output as produced; reserving what answers \
                     use instead of max_tokens");
            }
        }
        // `remaining` is the level right after the server charged this request, at an instant
        // the providers do not document: when it admitted the request (about our dispatch) or
        // when it sent the answer (our receipt, which for a long generation is seconds and
        // thousands of tokens of refill later). Both are considered.
        let from_remaining = |t: Instant| {
            remaining.map(|r| {
                let used = server_cap.saturating_sub(r);
                (
                    add(t, server.span(used.saturating_sub(tol))),
                    add(t, server.span(used.saturating_add(tol).min(server_cap))),
                )
            })
        };
        // A reset is measured against the response's `date`, so it gives `full_at` at the
        // reading's instant whichever it was: a reset rounded up and a date rounded down put
        // the true instant up to 2 s before it.
        let from_reset = reset.map(|r| {
            (
                sub(add(received, r), RESET_BELOW),
                add(received, r.saturating_add(RESET_ABOVE)),
            )
        });
        // Each timing is plausible when its two readings agree; a reset tells a reading taken
        // at admission from one taken at the answer once the answer took longer than the
        // readings' resolution.
        let agree =
            |rem: Option<(Instant, Instant)>, reset: Option<(Instant, Instant)>| match (rem, reset)
            {
                (Some(a), Some(b)) => {
                    let (lo, hi) = (a.0.max(b.0), a.1.min(b.1));
                    (lo <= hi).then_some((lo, hi))
                }
                (Some(a), None) | (None, Some(a)) => Some(a),
                (None, None) => None,
            };
        let (mut at_dispatch, mut at_receipt) = (
            agree(from_remaining(dispatched), from_reset),
            agree(from_remaining(received), from_reset),
        );
        // A reset measured against our own clock (no `date`) carries the clocks' skew: it may
        // not rule a timing out.
        let clock_bound = snapshot_undated && dialect != Some(Dialect::OpenAi);
        if clock_bound || (at_dispatch.is_none() && at_receipt.is_none()) {
            // The reset contradicts `remaining` whatever the timing: clocks disagree (a
            // server without a `date`, a skewed one). `remaining` is the level itself.
            if !clock_bound {
                tracing::debug!(key = %key, dimension = d.as_str(),
                    "rate limit: reset and remaining disagree; remaining kept");
            }
            (at_dispatch, at_receipt) = (
                agree(from_remaining(dispatched), None),
                agree(from_remaining(received), None),
            );
        }
        if remaining.is_none() && from_reset.is_none() {
            if ceiling {
                self.server[i] = Some(target);
            } else {
                self.buckets.set(d, Some(target));
            }
            return;
        }
        if !self.usage_seen
            && let Some((lo, hi)) = at_dispatch
        {
            // The server's `full_at` for comparing successive readings: the interval's middle,
            // unless the bucket may have been (nearly) full, when refill was lost and no
            // comparison is possible.
            let level_hi = server_cap
                .saturating_sub(server.span_units(hi.saturating_duration_since(dispatched)));
            let full_at = (level_hi.saturating_add(server_cap / 20) < server_cap)
                .then(|| lo + hi.saturating_duration_since(lo) / 2);
            if d == Dimension::InputTokens {
                self.learn_input_factor(key, &server, full_at, record);
            }
            if d == Dimension::OutputTokens {
                self.learn_output_share(key, &server, full_at, record);
            }
        }
        // What this key charged that the reading cannot contain, read at admission: requests and
        // input dispatched after this request; output in flight, and everything that finished
        // since this request left (this one included), which a server counting output as
        // produced charged after the reading. Read at the answer: what was admitted and not yet
        // sent, the output in flight, and this request's own (a server may charge it once the
        // answer is sent).
        // Requests refused or never sent since then were given back: they are not charged.
        let refunded = self.refunded_after(record);
        let after_input = self.dispatched[IN]
            .saturating_sub(record.after[IN])
            .saturating_sub(refunded[IN]);
        let output = self
            .outstanding_output
            .saturating_add(self.output_completed_after(record));
        // Admitted and not yet sent (held by a concurrency cap below): in no reading.
        let pending = self.pending;
        let (missing_dispatch, missing_receipt) = match d {
            Dimension::Requests => (
                self.dispatched[REQ]
                    .saturating_sub(record.after[REQ])
                    .saturating_sub(refunded[REQ]),
                pending[REQ],
            ),
            Dimension::InputTokens => (after_input, pending[IN]),
            Dimension::OutputTokens => (output, self.outstanding_output.saturating_add(own_output)),
            _ => (
                after_input.saturating_add(output),
                pending[IN]
                    .saturating_add(self.outstanding_output)
                    .saturating_add(own_output),
            ),
        };
        // The target has the server's capacity and window (the server's own bucket, or a local
        // bucket without a ceiling below the server's limit): add what the reading misses.
        // Other clients kept taking their share of the refill since the reading's instant: the
        // reading holds none of it, and the model charges it only from now on.
        let others_share = if self.shared_store {
            0.0
        } else {
            self.others[i].share()
        };
        let others_since = |t: Instant| {
            let units = others_share * target.span_units(now.saturating_duration_since(t)) as f64;
            if units.is_finite() && units > 0.0 {
                units.min(u64::MAX as f64) as u64
            } else {
                0
            }
        };
        let missing_dispatch = missing_dispatch.saturating_add(others_since(dispatched));
        let missing_receipt = missing_receipt.saturating_add(others_since(received));
        let shift = |(lo, hi): (Instant, Instant), missing: u64| {
            (
                add(lo.max(now), target.span(missing)),
                add(hi.max(now), target.span(missing)),
            )
        };
        let cases = [
            at_dispatch.map(|c| shift(c, missing_dispatch)),
            at_receipt.map(|c| shift(c, missing_receipt)),
        ];
        let (lo_at, hi_at) = match cases {
            [Some(a), Some(b)] => (a.0.min(b.0), a.1.max(b.1)),
            [Some(a), None] | [None, Some(a)] => a,
            // The readings contradict each other under both timings: take the widest
            // interval any of them allows.
            [None, None] => {
                let all = [
                    from_remaining(dispatched),
                    from_remaining(received),
                    from_reset,
                ];
                let lo = all.iter().flatten().map(|c| c.0).min().unwrap_or(now);
                let hi = all.iter().flatten().map(|c| c.1).max().unwrap_or(now);
                shift((lo, hi), missing_dispatch)
            }
        };
        let (mut most_used, mut least_used) = (server, server);
        most_used.set_full_at(hi_at);
        least_used.set_full_at(lo_at.min(hi_at));
        self.buckets.server_reading(
            d,
            ServerReading {
                most_used,
                least_used,
                sent: dispatched,
            },
        );
        let old = target.full_at();
        // How far off the model was, as evidence of what other clients take (see [`Others`]):
        // the middle of what the readings allow against what the model expects — its level
        // without the cushion its input reservations hold, which the server never charges.
        let learning = !created && !self.shared_store;
        let expected_before = learning.then(|| self.expected_full_at(d, &target, now));
        let mid = lo_at + hi_at.saturating_duration_since(lo_at) / 2;
        if old < lo_at || old > hi_at || created {
            target.set_full_at(hi_at);
            if matches!(d, Dimension::InputTokens | Dimension::Tokens) {
                self.input_read_through = self.input_read_through.max(record.seq);
                // The reading holds the server's count of every request up to this one.
                self.cushions = self.cushions.split_off(&(self.input_read_through + 1));
            }
            tracing::debug!(key = %key, dimension = d.as_str(), ceiling,
                old_level = Bucket::new(server_cap, server_window, old).level(now),
                new_level = target.level(now), server_remaining = ?reading.remaining(),
                "rate limit: level corrected from the server's reading");
        }
        if let Some(before) = expected_before {
            let after = self.expected_full_at(d, &target, now);
            // A reading is evidence when its instant hardly matters: what it allows is not much
            // wider than its resolution.
            let resolution = resolution(&target, tol) * 2;
            let precise = (hi_at.saturating_duration_since(lo_at) <= resolution)
                .then_some(resolution.as_secs_f64());
            let (off, jump) = (secs(mid, before), secs(after, before));
            if let Some(share) =
                self.others[i].observe(off, jump, precise, (server_cap, server_window), now)
            {
                tracing::debug!(key = %key, dimension = d.as_str(), share,
                    "rate limit: share of the refill other clients take learned");
            }
        }
        if ceiling {
            self.server[i] = Some(target);
        } else {
            self.buckets.set(d, Some(target));
        }
        if !full_at_reset
            && remaining == Some(0)
            && let Some(reset) = reading.reset()
        {
            // Fixed windows: nothing left until the window resets (a re-check goes after
            // `RECHECK_INTERVAL` when that is longer).
            let until = add(received, reset);
            self.cooldown_until = Some(self.cooldown_until.map_or(until, |c| c.max(until)));
            self.cooldown_seq = self.dispatch_seq;
            self.cooldown_set = Some(now);
        }
    }

    /// When `target` (the bucket of dimension `d` a reading corrects) would be full without
    /// the cushion of the input reservations not settled yet; never before `now` (a full
    /// bucket's `full_at` is any earlier instant).
    fn expected_full_at(&self, d: Dimension, target: &Bucket, now: Instant) -> Instant {
        let cushion = if matches!(d, Dimension::InputTokens | Dimension::Tokens) {
            self.cushions
                .range(self.input_read_through + 1..)
                .map(|(_, c)| *c)
                .fold(0, u64::saturating_add)
        } else {
            0
        };
        sub(target.full_at(), target.span(cushion)).max(now)
    }

    /// Compares what the server charged between two readings (`full_at`: `None` when the
    /// reading cannot be compared) with the raw estimates of the requests dispatched in between,
    /// and folds the ratio into the input ratio.
    pub(super) fn learn_input_factor(
        &mut self,
        key: &RateLimitKey,
        server: &Bucket,
        full_at: Option<Instant>,
        record: &Record,
    ) {
        let Some(full_at) = full_at else {
            self.anchor = None;
            return;
        };
        let here = Anchor {
            full_at,
            raw_after: record.raw_after,
        };
        let Some(a) = self.anchor else {
            self.anchor = Some(here);
            return;
        };
        if here.raw_after <= a.raw_after {
            return;
        }
        let estimated = (here.raw_after - a.raw_after) as f64;
        if estimated < server.capacity() as f64 {
            return;
        }
        let charged = server.span_units(here.full_at.saturating_duration_since(a.full_at)) as f64;
        let sample = charged / estimated;
        let old = self.input.mean();
        if self.input.observe(sample) {
            tracing::debug!(key = %key, old, new = self.input.mean(), sample,
                "rate limit: input estimate correction learned from readings");
        }
        self.anchor = Some(here);
    }

    /// Compares what the server charged for output between two readings with what the
    /// requests that finished in between reserved, and folds the share into the output
    /// estimate of requests whose true output is unknown.
    pub(super) fn learn_output_share(
        &mut self,
        key: &RateLimitKey,
        server: &Bucket,
        full_at: Option<Instant>,
        record: &Record,
    ) {
        let Some(full_at) = full_at else {
            self.output_anchor = None;
            return;
        };
        let here = OutputAnchor {
            full_at,
            known: record.known_before,
            unknown: record.unknown_before,
        };
        let Some(a) = self.output_anchor else {
            self.output_anchor = Some(here);
            return;
        };
        if here.unknown <= a.unknown || here.full_at <= a.full_at {
            return;
        }
        // At least a quarter of the bucket in between, so that the readings' resolution (about
        // a thousand tokens) stays a small part of the comparison.
        let unknown = (here.unknown - a.unknown) as f64;
        if unknown < (server.capacity() / 4) as f64 {
            return;
        }
        let known = here.known.saturating_sub(a.known) as f64;
        let charged = server.span_units(here.full_at.saturating_duration_since(a.full_at)) as f64;
        let sample = ((charged - known) / unknown).clamp(OUTPUT_SHARE_MIN, 1.0);
        let old = self.output.mean();
        if self.output.observe(sample) {
            tracing::debug!(key = %key, old, new = self.output.mean(), sample,
                "rate limit: output share learned from readings");
        }
        self.output_anchor = Some(here);
    }

    /// A request's `usage` arrived (with its answer's head, or at the end of its body): settle
    /// what its head left, and learn how the server counts.
    pub(super) fn settle_usage(
        &mut self,
        key: &RateLimitKey,
        mut a: Awaiting,
        usage: Usage,
        now: Instant,
    ) {
        self.usage_seen = true;
        self.settle_input(key, &mut a, usage.input_tokens(), now);
        // Output: the true figure replaces what the head settled.
        let output = usage.output_tokens().min(a.max_output);
        self.adjust(OUT, a.output_settled, output, now);
        if output < a.output_settled {
            if self.output_given_back.len() == super::key::MAX_REFUNDS {
                self.output_given_back.pop_front();
            }
            self.output_given_back
                .push_back((a.completion, a.output_settled - output));
        }
        if a.max_output > 0 {
            self.output
                .observe(output.max(1) as f64 / a.max_output as f64);
        }
    }

    /// A request's input usage arrived (alone, from a stream's `message_start`, or with its
    /// output): the server's count replaces what `a` charged for input, unless a reading
    /// already did, and teaches the input ratio once.
    pub(super) fn settle_input(
        &mut self,
        key: &RateLimitKey,
        a: &mut Awaiting,
        input: u64,
        now: Instant,
    ) {
        self.cushions.remove(&a.seq);
        if a.seq > self.input_read_through {
            self.adjust(IN, a.input_charged, input, now);
        }
        a.input_charged = input;
        if std::mem::replace(&mut a.input_settled, true) {
            return;
        }
        if !a.exact && a.raw > 0 && input > 0 {
            let sample = input as f64 / a.raw as f64;
            let old = self.input.mean();
            if self.input.observe(sample) && self.input.samples() <= 8 {
                tracing::debug!(key = %key, old, new = self.input.mean(), sample,
                    reservation = self.input.high(), "rate limit: input ratio learned from usage");
            }
        }
    }

    /// Moves dimension `i` (and the combined tokens) from a charge of `was` to `is`, and counts
    /// a larger output as completed.
    fn adjust(&mut self, i: usize, was: u64, is: u64, now: Instant) {
        self.move_charge(i, was, is, now);
        if i == OUT {
            self.completed_output = self.completed_output.saturating_add(is.saturating_sub(was));
        }
    }

    /// Moves the buckets of dimension `i` (and the combined tokens) from a charge of `was` to
    /// `is`.
    fn move_charge(&mut self, i: usize, was: u64, is: u64, now: Instant) {
        let dims = [i, TOK];
        if is > was {
            let more = is - was;
            for &j in &dims {
                let d = Dimension::ALL[j];
                if let Some(mut b) = self.buckets.get(d) {
                    b.charge(more, now);
                    self.buckets.set(d, Some(b));
                }
                if let Some(s) = &mut self.server[j] {
                    s.charge(more, now);
                }
            }
        } else {
            let back = was - is;
            let mut amounts = [0; 4];
            amounts[i] = back;
            amounts[TOK] = back;
            self.refund(&dims, &amounts, now);
        }
    }

    /// The server refused a request the model admitted: the model was too optimistic. Raises
    /// the margin of each dimension the refusal names (the readings of a 429 show which bucket
    /// lacked the cost), or of every known one when it names none. Refusals of requests sent
    /// before the last raise are the same episode and raise nothing again.
    pub(super) fn tighten(
        &mut self,
        key: &RateLimitKey,
        record: &Record,
        snapshot: &RateLimitSnapshot,
        lowered: [bool; 4],
        now: Instant,
    ) {
        // A probe went because nothing was known: its refusal disproves no prediction. Nor does
        // the refusal of a request sent before the last raise (the same episode).
        if record.probe || record.seq <= self.tightened_seq {
            return;
        }
        let tol = if snapshot.dialect() == Some(Dialect::Anthropic) {
            TOKENS_REMAINING_TOLERANCE
        } else {
            0
        };
        // Each dimension the refusal names, with the units it lacked: the request's cost beyond
        // what the reading says was left (and its rounding).
        let named: Vec<(usize, u64)> = snapshot
            .iter()
            .filter_map(|(d, r)| {
                let t = if d == Dimension::Requests { 0 } else { tol };
                let need = record.charge[d.index()].saturating_add(t);
                let rem = r.remaining()?;
                (rem < need).then(|| (d.index(), need - rem))
            })
            .collect();
        let dims: Vec<(usize, Option<u64>)> = if named.is_empty() {
            (0..4).map(|i| (i, None)).collect()
        } else {
            named.into_iter().map(|(i, lack)| (i, Some(lack))).collect()
        };
        let mut raised = false;
        for (i, lack) in dims {
            let Some(b) = self.buckets.get(Dimension::ALL[i]) else {
                continue;
            };
            if lowered[i] {
                continue;
            }
            let capacity = b.capacity().max(1) as f64;
            let at_least = lack.map(|l| l as f64 / capacity);
            let tol = if i == REQ { 0 } else { tol };
            let resolution = b.span_units(resolution(&b, tol)).max(1) as f64 / capacity;
            let share = self.margin[i].raise(at_least, resolution, now);
            raised = true;
            tracing::info!(key = %key, dimension = Dimension::ALL[i].as_str(), margin = share,
                lacked = ?lack, capacity = b.capacity(),
                "rate limit: refused where the model said it fits; margin raised");
        }
        if raised {
            self.tightened_seq = self.dispatch_seq;
        }
    }

    /// A throttle from a server that sends no rate-limit headers: pace the key on a rate
    /// learned from throttles alone.
    pub(super) fn throttled(&mut self, key: &RateLimitKey, record: &Record, now: Instant) {
        let measured = self.sends.pace(now);
        let accepted = self.accepted.within(ACCEPTED_WINDOW, now);
        match &mut self.throttle {
            // The first throttle ends the slow start.
            Some(t) if t.starting() => {
                *t = Throttle::new(measured, accepted, self.dispatch_seq, now);
                tracing::info!(key = %key, rate_per_s = t.rate(now),
                    "rate limit: throttled without rate-limit headers; pacing on a learned rate");
            }
            // A throttle of a request sent before the last cut, or soon after it, is the same
            // episode: a server whose bucket went into debt refuses for a while whatever the
            // pace, and cutting on each refusal would collapse the rate.
            Some(t) if record.seq <= t.cut_seq || !t.may_cut(now) => {}
            Some(t) => {
                let rate = t.cut(measured, accepted, self.dispatch_seq, now);
                tracing::info!(key = %key, rate_per_s = rate, "rate limit: throttled; pace lowered");
            }
            None => {
                let t = Throttle::new(measured, accepted, self.dispatch_seq, now);
                tracing::info!(key = %key, rate_per_s = t.rate(now),
                    "rate limit: throttled without rate-limit headers; pacing on a learned rate");
                self.throttle = Some(t);
            }
        }
        if let Some(t) = &mut self.throttle {
            t.refused(record.seq, self.dispatch_seq, now);
        }
    }
}

/// Anthropic's `tokens` reading is "the most restrictive token limit in effect": when its limit
/// is the input or the output limit it is another reading of that bucket, not a combined one.
pub(super) fn duplicates_a_token_bucket(
    snapshot: &RateLimitSnapshot,
    reading: &BucketReading,
) -> bool {
    snapshot.dialect() == Some(Dialect::Anthropic)
        && [Dimension::InputTokens, Dimension::OutputTokens]
            .iter()
            .any(|d| snapshot.get(*d).and_then(BucketReading::limit) == reading.limit())
}

/// How finely readings show a bucket's level: a second of refill (resets are whole seconds), or
/// the rounding of `remaining` (`± tol`) when that is coarser. The model cannot be kept closer to
/// the server than this; a refusal's first margin is one of it, and a reading that allows a
/// much wider interval is no evidence of what other clients take.
fn resolution(bucket: &Bucket, tol: u64) -> Duration {
    Duration::from_secs(1).max(bucket.span(tol.saturating_mul(2)))
}

/// `a − b` in seconds, negative when `a` is earlier.
fn secs(a: Instant, b: Instant) -> f64 {
    if a >= b {
        a.saturating_duration_since(b).as_secs_f64()
    } else {
        -b.saturating_duration_since(a).as_secs_f64()
    }
}

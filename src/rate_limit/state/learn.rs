//! Learning from responses: readings, usage, refusals.

use super::*;

impl KeyState {
    /// Learns from a response to a request dispatched with `record`; returns the cooldown to
    /// announce when the response was a 429.
    pub(super) fn complete(
        &mut self,
        key: &RateLimitKey,
        record: &Record,
        response: Reply<'_>,
    ) -> Option<Instant> {
        let now = Instant::now();
        let Reply {
            snapshot,
            outcome,
            received,
            usage,
        } = response;
        let limited = outcome.kind() == OutcomeKind::RateLimited;
        let mut absorbed = None;
        if limited {
            // The server refused the request: it charged nothing for it.
            self.refund(&[REQ, IN, OUT, TOK], &record.charge, now);
            self.note_refund(record);
            let wait = outcome.retry_after().unwrap_or(self.cooldown_without_hint);
            let until = add(received, wait);
            let until = self.cooldown_until.map_or(until, |c| c.max(until));
            self.cooldown_until = Some(until);
            absorbed = Some(until);
            tracing::info!(key = %key, wait_ms = wait.as_millis() as u64,
                cooldown_ms = until.saturating_duration_since(now).as_millis() as u64,
                "rate limit: 429, cooling down every request of this key");
        }
        // What the server charged (or will charge) for this request's output: nothing when it
        // refused it, the true figure when a `Usage` says, else the learned share of the
        // reservation.
        let reserved = record.charge[OUT];
        let own_output = match (limited, usage) {
            (true, _) => 0,
            (false, Some(u)) => u.output_tokens().min(reserved),
            (false, None) => ((reserved as f64 * self.output_share).ceil() as u64).min(reserved),
        };
        if limited || usage.is_some() {
            self.known_output = self.known_output.saturating_add(own_output);
        } else {
            self.unknown_reserved = self.unknown_reserved.saturating_add(reserved);
        }
        self.finish(record, own_output);
        if !limited {
            // Settle the reservation at once, before the reading is compared (neither
            // accounting charges the unused part of `max_tokens` for long); an estimate that
            // was too low shows in the next readings, which correct the level.
            let back = reserved - own_output;
            self.refund(&[OUT, TOK], &[0, 0, back, back], now);
        }
        if snapshot.is_empty() {
            if record.probe {
                self.probe_done();
                let ok = outcome.is_success() && !self.any_bucket();
                if ok {
                    self.probe = Probe::Unlimited;
                    tracing::debug!(key = %key, "rate limit: no rate-limit headers; not limited");
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
                self.learn(key, d, reading, dialect, record, received, now);
            }
        }
        self.wake_head();
        absorbed
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn learn(
        &mut self,
        key: &RateLimitKey,
        d: Dimension,
        reading: &BucketReading,
        dialect: Option<Dialect>,
        record: &Record,
        received: Instant,
        now: Instant,
    ) {
        let i = d.index();
        if let Some(limit) = reading.limit() {
            let window = reading.window().unwrap_or(self.window);
            if self.learned[i] != Some((limit, window)) {
                tracing::info!(key = %key, dimension = d.as_str(), old = ?self.learned[i].map(|l| l.0),
                    new = limit, window_s = window.as_secs_f64(), "rate limit: limit learned");
                self.learned[i] = Some((limit, window));
            }
        }
        let Some((cap, window)) = self.capacity(d) else {
            return;
        };
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
        let dispatched = record.at.min(received);
        // `remaining` is the level right after the server admitted this request: at dispatch,
        // plus the time the request takes to reach the server (at most `READING_DELAY` is
        // assumed; the rounding tolerance covers more). Anthropic rounds token counts to the
        // nearest thousand.
        let read_at = received.min(add(dispatched, READING_DELAY));
        let tol = if dialect == Some(Dialect::Anthropic) && d != Dimension::Requests {
            TOKENS_REMAINING_TOLERANCE
        } else {
            0
        };
        let from_remaining = reading.remaining().map(|r| {
            let used = server_cap.saturating_sub(r);
            (
                add(dispatched, server.span(used.saturating_sub(tol))),
                add(
                    read_at,
                    server.span(used.saturating_add(tol).min(server_cap)),
                ),
            )
        });
        // A reset is measured against the response's `date` (so from the receipt): a reset
        // rounded up and a date rounded down put the true instant up to 2 s before it.
        let full_at_reset = matches!(dialect, Some(Dialect::Anthropic) | Some(Dialect::OpenAi));
        let from_reset = reading.reset().filter(|_| full_at_reset).map(|r| {
            (
                sub(add(received, r), RESET_BELOW),
                add(received, r + RESET_ABOVE),
            )
        });
        let (lo, hi) = match (from_remaining, from_reset) {
            (Some(a), Some(b)) => {
                let (lo, hi) = (a.0.max(b.0), a.1.min(b.1));
                if lo <= hi { (lo, hi) } else { (hi, lo) }
            }
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => {
                if ceiling {
                    self.server[i] = Some(target);
                } else {
                    self.buckets.set(d, Some(target));
                }
                return;
            }
        };
        if d == Dimension::InputTokens {
            let level_hi = server_cap
                .saturating_sub(server.span_units(hi.saturating_duration_since(dispatched)));
            self.learn_input_factor(key, &server, lo, hi, level_hi, record);
        }
        if d == Dimension::OutputTokens {
            let level_hi = server_cap
                .saturating_sub(server.span_units(hi.saturating_duration_since(dispatched)));
            self.learn_output_share(key, &server, lo, hi, level_hi, record);
        }
        // What this key charged that the reading cannot contain. Input and requests:
        // everything dispatched after this request. Output: everything in flight, and everything
        // that finished since this request left (this one included), which a server counting
        // output as produced charged after taking this reading.
        // Requests refused or never sent since then were given back: they are not charged.
        let refunded = self.refunded_after(record);
        let after_input = self.dispatched[IN]
            .saturating_sub(record.after[IN])
            .saturating_sub(refunded[IN]);
        let output = self.outstanding_output.saturating_add(
            self.completed_output
                .saturating_sub(record.completed_before),
        );
        let not_in_reading = match d {
            Dimension::Requests => self.dispatched[REQ]
                .saturating_sub(record.after[REQ])
                .saturating_sub(refunded[REQ]),
            Dimension::InputTokens => after_input,
            Dimension::OutputTokens => output,
            _ => after_input.saturating_add(output),
        };
        // The target has the server's capacity and window (the server's own bucket, or a local
        // bucket without a ceiling below the server's limit): add what the reading misses.
        let shift = |t: Instant| add(t.max(now), target.span(not_in_reading));
        let (lo_at, hi_at) = (shift(lo), shift(hi));
        let old = target.full_at();
        if old < lo_at || old > hi_at {
            target.set_full_at(hi_at);
            tracing::debug!(key = %key, dimension = d.as_str(), ceiling,
                old_level = Bucket::new(server_cap, server_window, old).level(now),
                new_level = target.level(now), server_remaining = ?reading.remaining(),
                "rate limit: level corrected from the server's reading");
        }
        if ceiling {
            self.server[i] = Some(target);
        } else {
            self.buckets.set(d, Some(target));
        }
        if !full_at_reset
            && reading.remaining() == Some(0)
            && let Some(reset) = reading.reset()
        {
            // Fixed windows: nothing left until the window resets.
            let until = add(received, reset);
            self.cooldown_until = Some(self.cooldown_until.map_or(until, |c| c.max(until)));
        }
    }

    /// Compares what the server charged between two readings with the raw estimates of the
    /// requests dispatched in between, and folds the ratio into the input correction factor.
    pub(super) fn learn_input_factor(
        &mut self,
        key: &RateLimitKey,
        server: &Bucket,
        lo: Instant,
        hi: Instant,
        level_hi: u64,
        record: &Record,
    ) {
        if level_hi + server.capacity() / 20 >= server.capacity() {
            // The server's bucket may have been full: refill lost, no comparison possible.
            self.anchor = None;
            return;
        }
        let here = Anchor {
            full_at: lo + hi.saturating_duration_since(lo) / 2,
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
        let sample = (charged / estimated).clamp(FACTOR_MIN, FACTOR_MAX);
        let old = self.input_factor;
        let new =
            (old * (1.0 - FACTOR_ALPHA) + sample * FACTOR_ALPHA).clamp(FACTOR_MIN, FACTOR_MAX);
        if sample.is_finite() {
            self.input_factor = new;
            tracing::debug!(key = %key, old, new, sample, "rate limit: input estimate correction learned");
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
        lo: Instant,
        hi: Instant,
        level_hi: u64,
        record: &Record,
    ) {
        if level_hi + server.capacity() / 20 >= server.capacity() {
            // The server's bucket may have been full: refill lost, no comparison possible.
            self.output_anchor = None;
            return;
        }
        let here = OutputAnchor {
            full_at: lo + hi.saturating_duration_since(lo) / 2,
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
        let old = self.output_share;
        let new = (old * (1.0 - OUTPUT_SHARE_ALPHA) + sample * OUTPUT_SHARE_ALPHA)
            .clamp(OUTPUT_SHARE_MIN, 1.0);
        if sample.is_finite() {
            self.output_share = new;
            tracing::debug!(key = %key, old, new, sample, "rate limit: output share learned");
        }
        self.output_anchor = Some(here);
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

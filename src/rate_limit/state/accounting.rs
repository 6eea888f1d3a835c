//! How the server charges output: `max_tokens` reserved at admission, or the output counted as
//! it is produced. Learned per key from the readings, since providers document both.
//!
//! Anthropic's current documentation counts output tokens as they are produced: `max_tokens`
//! does not count against the output limit, and a request is admitted while the bucket is not
//! in debt. An older version estimated output from `max_tokens` at admission, and gateways may
//! still do so. Reserving `max_tokens` for every request in flight is safe under both, and costly
//! under the first: a `max_tokens` of 16,000 against Tier 1's 8,000 output tokens per minute
//! could never be admitted, and a request whose answer uses a tenth of its `max_tokens` holds ten
//! times its share of the bucket while in flight.
//!
//! So a key starts by reserving `max_tokens` (never more than the whole bucket: a larger one
//! waits for a full bucket and goes), and watches for proof that its server does not:
//!
//! - **Counted as produced** once a request whose `max_tokens` exceeds the output limit is
//!   answered, or once a reading shows the server holds less in reserve than this
//!   key's own requests in flight would under the older accounting. A *shadow* bucket per
//!   output reading charges each request's `max_tokens` when it is sent and gives it all back
//!   when it ends; it ignores other clients and what answers produced, so under the older
//!   accounting the server has used at least as much as the shadow (less its readings'
//!   rounding and answers on their way). A reading that has used less by more than that is
//!   impossible under it. Reservations then cover the share of `max_tokens` this key's
//!   answers use (learned from `usage`, with its spread), and each is settled to the true
//!   figure when the answer comes. What must be covered is the **sum** of the outputs in flight,
//!   whose spread grows as the square root of their number: each of `n` requests reserves the
//!   mean share plus `1/√n` of the cushion up to the high quantile (one request alone reserves
//!   the quantile). Reserving the quantile for each of 34 long requests in flight held half of
//!   a 200,000-token bucket and the last admissions of a run waited for it (`sweep-58` of the
//!   goodput sweep: 0.945 of T\* → 0.962); reserving the bare mean made outputs above it read
//!   as other clients' use (`sweep-18`: 0.996 → 0.908).
//! - **Reserved at admission** once a 429 shows every bucket with room for the request with its
//!   output counted as produced (and twice its estimated input), but not with its `max_tokens`: then
//!   `max_tokens` is reserved again, and a request whose `max_tokens` exceeds the output limit fails
//!   at once with `CostExceedsLimit` (until such a request, let through to re-check the limit, is
//!   answered). A refusal that proves neither (the output bucket read empty: a server counting output
//!   as produced refuses when it is in debt) changes nothing in the belief; the margin it raises is
//!   the answer to it. Falling back to reserving `max_tokens` on it held each request of a
//!   long-`max_tokens` key to a whole bucket for ten minutes, until a request above the limit was
//!   answered again, and calls ran past their deadlines.
//!
//! A whole answer's head comes when its output is done, and its reservation is settled there
//! (to the learned share until its `usage` is read). A stream's head comes before any output:
//! a server reserving at admission holds `max_tokens` until the stream ends, so unless output is
//! proved counted as produced the reservation stays until the stream's `usage` settles it.
//! Settling it at the head admitted requests into a bucket the server still held (`sweep-02`
//! of the goodput sweep with streams: an output refusal before the accounting was learned).

use super::*;

/// How many output usages a key learns before reserving their share instead of `max_tokens`.
const SHARE_SAMPLES: u32 = 3;
/// What answers on their way may have given back at the server before their readings reach us,
/// as a share of the bucket, on top of the readings' rounding.
const SHADOW_SLACK: f64 = 0.05;

/// What a key believes of its server's output accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum OutputCounting {
    /// No proof either way: reserve `max_tokens`, at most the whole bucket.
    #[default]
    Unknown,
    /// Output is counted as produced: reserve its expected share.
    AsProduced,
    /// `max_tokens` is reserved at admission: reserve it, and fail what can never fit.
    Reserved,
}

impl OutputCounting {
    /// As the snapshot and a store say it: `Some(true)` counted as produced, `Some(false)`
    /// `max_tokens` reserved, `None` no proof.
    pub(super) fn as_produced(self) -> Option<bool> {
        match self {
            OutputCounting::Unknown => None,
            OutputCounting::AsProduced => Some(true),
            OutputCounting::Reserved => Some(false),
        }
    }

    /// The belief [`as_produced`](Self::as_produced) says.
    pub(super) fn proved(as_produced: Option<bool>) -> Self {
        match as_produced {
            None => OutputCounting::Unknown,
            Some(true) => OutputCounting::AsProduced,
            Some(false) => OutputCounting::Reserved,
        }
    }
}

/// The output accounting a key has learned, and the evidence for it.
#[derive(Clone, Debug, Default)]
pub(super) struct Accounting {
    pub(super) counting: OutputCounting,
    /// Per dimension read (output, or a combined tokens bucket): `max_tokens` of the requests in
    /// flight, refilled at the server's rate.
    shadow: [Option<Bucket>; 4],
}

impl Accounting {
    /// The dimensions whose readings test the accounting.
    const DIMS: [usize; 2] = [OUT, TOK];

    /// Charges a request's `max_tokens` to the shadows; returns what each had used after it.
    pub(super) fn sent(&mut self, max_output: u64, now: Instant) -> [Option<u64>; 4] {
        let mut used = [None; 4];
        for i in Self::DIMS {
            if let Some(s) = &mut self.shadow[i] {
                s.charge(max_output, now);
                used[i] = Some(s.used(now));
            }
        }
        used
    }

    /// A request ended (answered, refused, failed or dropped): its `max_tokens` is no longer
    /// held under either accounting.
    pub(super) fn ended(&mut self, max_output: u64, now: Instant) {
        for s in self.shadow.iter_mut().flatten() {
            s.refund(max_output, now);
        }
    }

    /// A reading of dimension `i` (output or combined tokens): `used` units of a bucket of
    /// `capacity` per `window`, give or take `tol`. `at_dispatch` is what the shadow had used
    /// right after the request was sent (a reading taken at admission), the shadow's level now
    /// stands for one taken at the answer. Returns whether this reading changed the belief.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reading(
        &mut self,
        i: usize,
        capacity: u64,
        window: Duration,
        used: u64,
        tol: u64,
        at_dispatch: Option<u64>,
        now: Instant,
    ) -> bool {
        let Some(shadow) = &mut self.shadow[i] else {
            self.shadow[i] = Some(Bucket::new(capacity, window, now));
            return false;
        };
        if (shadow.capacity(), shadow.window()) != (capacity, window) {
            shadow.resize(capacity, window, now);
        }
        if self.counting != OutputCounting::Unknown {
            return false;
        }
        // The reading was taken at admission or at the answer: it must contradict both. A
        // request sent before the shadow existed cannot be judged at admission.
        let Some(at_dispatch) = at_dispatch else {
            return false;
        };
        let now_used = shadow.used(now);
        let least = at_dispatch.min(now_used);
        let slack = tol.saturating_add((capacity as f64 * SHADOW_SLACK) as u64);
        if least <= used.saturating_add(slack) {
            return false;
        }
        self.counting = OutputCounting::AsProduced;
        true
    }

    /// A request whose `max_tokens` exceeds the output limit the server reports (or its combined
    /// tokens limit) was answered: only a server counting output as produced admits it.
    /// Returns whether the belief changed.
    pub(super) fn answered(&mut self, max_output: u64, limits: [Option<u64>; 4]) -> bool {
        let beyond = Self::DIMS
            .iter()
            .any(|&i| limits[i].is_some_and(|l| max_output > l));
        if beyond && self.counting != OutputCounting::AsProduced {
            self.counting = OutputCounting::AsProduced;
            return true;
        }
        false
    }

    /// A 429 whose readings leave every bucket room for the request with its output counted as
    /// produced (one token) but not with its `max_tokens`: proof of a reservation at admission.
    /// Returns whether the belief changed.
    pub(super) fn refused(&mut self, snapshot: &RateLimitSnapshot, record: &Record) -> bool {
        if self.counting == OutputCounting::Reserved {
            return false;
        }
        let tol = if snapshot.dialect() == Some(Dialect::Anthropic) {
            TOKENS_REMAINING_TOLERANCE
        } else {
            0
        };
        // The input charge is an estimate: twice it must fit, so that an input bucket the
        // estimate understated is not taken for room.
        let input = record.charge[IN].saturating_mul(2);
        let room = |d: Dimension, need: u64| {
            snapshot
                .get(d)
                .and_then(BucketReading::remaining)
                .map(|r| r >= need.saturating_add(if d == Dimension::Requests { 0 } else { tol }))
        };
        let max = record.max_output;
        let (output_dim, other) = if snapshot.get(Dimension::OutputTokens).is_some() {
            (Dimension::OutputTokens, 0)
        } else {
            (Dimension::Tokens, input)
        };
        let fits_produced = room(output_dim, other.saturating_add(1));
        let fits_reserved = room(output_dim, other.saturating_add(max));
        let others_fit = room(Dimension::Requests, 1) != Some(false)
            && (output_dim == Dimension::Tokens
                || room(Dimension::InputTokens, input) != Some(false));
        if others_fit && fits_produced == Some(true) && fits_reserved == Some(false) {
            self.counting = OutputCounting::Reserved;
            return true;
        }
        false
    }
}

impl KeyState {
    /// What a request whose nominal charge is `nominal` (output at its `max_tokens`) reserves
    /// under what the key knows of its server's output accounting.
    pub(super) fn reservation(&self, nominal: &Charge) -> Charge {
        let max = nominal[OUT];
        let input = nominal[TOK].saturating_sub(max);
        let counting = self.accounting.counting;
        let mut out =
            if counting == OutputCounting::AsProduced && self.output.samples() >= SHARE_SAMPLES {
                // The mean share and `1/√n` of the cushion to the high quantile (module docs).
                let (mean, high) = (self.output.mean(), self.output.high());
                let n = (self.in_flight + 1) as f64;
                let share = mean + (high - mean) / n.sqrt();
                ((max as f64 * share).ceil() as u64).clamp(max.min(1), max)
            } else {
                max
            };
        if counting != OutputCounting::Reserved {
            // Never more than the whole bucket: the server admits it once it is not in debt
            // (or, reserving, proves it with a refusal).
            let cap = |d: Dimension| self.buckets.get(d).map(|b| b.capacity());
            if let Some(c) = cap(Dimension::OutputTokens) {
                out = out.min(c);
            }
            if let Some(c) = cap(Dimension::Tokens) {
                out = out.min(c.saturating_sub(input));
            }
        }
        [nominal[REQ], nominal[IN], out, input.saturating_add(out)]
    }
}

//! The three learners every key keeps, written once: a ratio with its spread ([`Ratio`]), a
//! margin raised by refusals ([`Margin`]), and a request rate learned from throttles alone
//! ([`Throttle`]).
//!
//! Each one turns evidence into a more careful or a less careful decision, and none can freeze a
//! key: ratios are bounded, margins decay, the throttle rate grows back.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::rate_limit::store::Estimate;

/// How many standard deviations above the mean a reservation covers (about the 98th percentile
/// of a log-normal error).
const QUANTILE_Z: f64 = 2.0;
/// The weight of a new sample once the prior is forgotten.
const RATIO_ALPHA: f64 = 0.1;

/// A learned ratio (what the server charged ÷ what we estimated) with its spread, in log space so
/// that "twice too high" and "half too low" weigh the same.
///
/// The first samples are averaged (the prior counts as one sample), later ones weighted
/// [`RATIO_ALPHA`]: a few answers correct an estimate that is 40 % off, and one odd answer later
/// moves it only a little. The spread of the first samples is their own, around their own mean,
/// with the prior's spread counted as one sample: the distance between the prior and the
/// samples is an error of the prior, not a spread of the server's counts (an output share
/// that starts at 1.0 and is 0.15 in every answer would otherwise keep its high quantile near
/// 1.0 for dozens of answers, and each request would hold a whole bucket).
#[derive(Clone, Copy, Debug)]
pub(super) struct Ratio {
    mean: f64,
    var: f64,
    samples: u32,
    min: f64,
    max: f64,
    /// The prior, and the mean and sum of squared deviations of the samples, while they are
    /// averaged.
    prior: (f64, f64),
    sample_mean: f64,
    m2: f64,
}

impl Ratio {
    /// A ratio of `prior` with a log-space spread of `prior_sd`, bounded to `min..=max`.
    pub(super) fn new(prior: f64, prior_sd: f64, min: f64, max: f64) -> Self {
        let mean = prior.clamp(min, max).ln();
        let var = prior_sd * prior_sd;
        Ratio {
            mean,
            var,
            samples: 0,
            min,
            max,
            prior: (mean, var),
            sample_mean: 0.0,
            m2: 0.0,
        }
    }

    /// Folds in one observed ratio; ignores what is not a positive finite number.
    pub(super) fn observe(&mut self, sample: f64) -> bool {
        if !sample.is_finite() || sample <= 0.0 {
            return false;
        }
        let x = sample.clamp(self.min, self.max).ln();
        let a = 1.0 / (f64::from(self.samples) + 2.0);
        if a > RATIO_ALPHA {
            // Averaged with the prior (Welford's running mean and squared deviations).
            let n = f64::from(self.samples) + 1.0;
            let d = x - self.sample_mean;
            self.sample_mean += d / n;
            self.m2 += d * (x - self.sample_mean);
            let (prior_mean, prior_var) = self.prior;
            self.mean = (prior_mean + n * self.sample_mean) / (n + 1.0);
            self.var = (prior_var + self.m2) / n;
        } else {
            let d = x - self.mean;
            self.mean += RATIO_ALPHA * d;
            self.var = (1.0 - RATIO_ALPHA) * (self.var + RATIO_ALPHA * d * d);
        }
        self.samples = self.samples.saturating_add(1);
        true
    }

    /// The mean ratio.
    pub(super) fn mean(&self) -> f64 {
        self.mean.exp().clamp(self.min, self.max)
    }

    /// A high quantile of the ratio: what a reservation multiplies its estimate by.
    pub(super) fn high(&self) -> f64 {
        (self.mean + QUANTILE_Z * self.var.max(0.0).sqrt())
            .exp()
            .clamp(self.min, self.max)
    }

    /// Samples folded in so far.
    pub(super) fn samples(&self) -> u32 {
        self.samples
    }

    /// The learned state, for a store.
    pub(super) fn estimate(&self) -> Estimate {
        Estimate {
            log_mean: self.mean,
            log_var: self.var,
            samples: self.samples,
        }
    }

    /// Adopts a state learned elsewhere (ignored when not finite).
    pub(super) fn adopt(&mut self, e: Estimate) {
        if e.log_mean.is_finite() && e.log_var.is_finite() && e.log_var >= 0.0 {
            self.mean = e.log_mean.clamp(self.min.ln(), self.max.ln());
            self.var = e.log_var;
            self.samples = e.samples;
            // What is averaged from here on starts from what was adopted.
            self.prior = (self.mean, self.var);
            self.sample_mean = self.mean;
            self.m2 = self.var * f64::from(e.samples);
        }
    }
}

/// The most of a bucket's capacity a margin sets aside.
const MARGIN_MAX: f64 = 0.5;
/// The margin's time constant: without refusals it falls to 1/e in this time.
pub(crate) const MARGIN_DECAY: Duration = Duration::from_secs(300);
/// How long the margin a refusal showed was needed is remembered (its time constant): the
/// model's optimism against one server persists, and a margin that decays below what it needed
/// within minutes is refused again (one refusal every five minutes is over 1 % of the attempts
/// of a key sending a request every three seconds).
const MARGIN_MEMORY: Duration = Duration::from_secs(3_600);

/// `share` set at `at`, decayed exponentially with time constant `tau` until `now` (0 when never
/// set or when the arithmetic overflows).
fn decayed(share: f64, at: Option<Instant>, tau: Duration, now: Instant) -> f64 {
    let Some(at) = at else { return 0.0 };
    let age = now.saturating_duration_since(at).as_secs_f64();
    let share = share * (-age / tau.as_secs_f64()).exp();
    if share.is_finite() { share } else { 0.0 }
}

/// A share of a bucket's capacity kept free because the server refused a request the model
/// said would fit.
///
/// A refusal the model did not predict proves the model optimistic: the margin doubles and
/// decays exponentially while no refusal comes, like a congestion window after a loss, while
/// what the refusal showed was needed decays over an hour ([`MARGIN_MEMORY`]), like TCP's
/// slow-start threshold. The first step is what the refusal lacked, and at least the resolution
/// of the readings that keep the model (a second of refill, or the rounding of `remaining`): the
/// model cannot be kept closer to the server than that. The margin is at most [`MARGIN_MAX`] of
/// the capacity. It is an offset of the
/// bucket's level, not a rate: while the bucket is the binding one requests still leave at its
/// refill rate, so a margin costs one delay of `margin / rate`, not throughput. Kept as a share,
/// it follows the capacity when a limit changes.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Margin {
    share: f64,
    at: Option<Instant>,
    /// What the last refusal showed the model needed: the margin it had then and what it lacked
    /// on top, remembered for [`MARGIN_MEMORY`].
    needed: f64,
    needed_at: Option<Instant>,
}

impl Margin {
    /// The share set aside at `now`.
    fn share(&self, now: Instant) -> f64 {
        self.share_at(now)
            .max(decayed(self.needed, self.needed_at, MARGIN_MEMORY, now))
    }

    /// The share set aside at `now`, for a store: the doubling part only. What a refusal
    /// showed was needed stays this process's memory. An adopting process takes a share as its
    /// own from the moment it adopts it, so a slowly decaying share would be re-adopted at full
    /// strength across the fleet, and a refusal taken while pacing alone during a store outage
    /// would keep the restarted shared bucket shut for an hour.
    pub(super) fn share_at(&self, now: Instant) -> f64 {
        decayed(self.share, self.at, MARGIN_DECAY, now)
    }

    /// Adopts a share learned elsewhere when it is larger than this one's at `now`.
    pub(super) fn adopt(&mut self, share: f64, now: Instant) {
        if share.is_finite() && share > self.share(now) + 1e-6 {
            self.share = share.clamp(0.0, MARGIN_MAX);
            self.at = Some(now);
        }
    }

    /// The units of a bucket of `capacity` set aside at `now`, rounded up: a bucket of 20
    /// requests keeps one free until the margin has decayed to a tenth of a request, instead of
    /// none as soon as it falls below one.
    pub(super) fn get(&self, capacity: u64, now: Instant) -> u64 {
        let units = self.share(now) * capacity as f64;
        if units < 0.1 {
            0
        } else {
            units.ceil().min(u64::MAX as f64) as u64
        }
    }

    /// A refusal: doubles the margin within its bounds — at least `resolution` (the readings'
    /// resolution, as a share of the capacity), and at least the margin it had plus the share
    /// the refusal showed lacking (`at_least`, when its readings say), which is remembered for
    /// [`MARGIN_MEMORY`]. Returns the new share.
    pub(super) fn raise(&mut self, at_least: Option<f64>, resolution: f64, now: Instant) -> f64 {
        let floor = if resolution.is_finite() {
            resolution.clamp(0.0, MARGIN_MAX)
        } else {
            MARGIN_MAX
        };
        let at_least = at_least.filter(|s| s.is_finite() && *s >= 0.0);
        let first = at_least.map_or(floor, |s| s.max(floor));
        let had = self.share(now);
        self.needed = (had + at_least.unwrap_or(0.0)).min(MARGIN_MAX);
        self.needed_at = Some(now);
        self.share = (had * 2.0)
            .max(first)
            .max(self.needed)
            .clamp(floor, MARGIN_MAX);
        self.at = Some(now);
        self.share
    }
}

/// The most of a bucket's refill other clients are taken to use.
const OTHERS_MAX: f64 = 0.5;
/// The time constant of the share's average: a reading's error moves the share by its size over
/// this. Readings are coarse (tokens rounded to the thousand, resets to the second: about a
/// second of refill), so one reading's error over a minute is a share of under 2 %; a change in
/// what other clients take is followed within a minute or two, and a refusal meanwhile raises
/// the margin at once.
const OTHERS_TAU: Duration = Duration::from_secs(60);

/// The share of a bucket's refill that other clients of the organisation (another service, a
/// batch job) take: only the server's readings show it. Between readings the model would refill
/// at the whole rate and drift optimistic by that share; instead the share is charged to the
/// local bucket as time passes, as if it were one more client.
///
/// Evidence: how far each reading puts the server below the model (positive) or above it, in
/// seconds of refill, less what the previous reading left uncorrected (an error the model keeps
/// is counted once, not at every reading that sees it again). That drift happened at the share
/// the model already charged, so it is the error of the share times the time between readings:
/// the share moves by it over [`OTHERS_TAU`], a continuous average whose noise does not grow
/// with the number of readings. The share stays within `0..=`[`OTHERS_MAX`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Others {
    share: f64,
    accrued_to: Instant,
    carry: f64,
    residual: f64,
    /// The bucket (capacity, window) the residual is measured in: seconds of another rate
    /// compare with nothing.
    scale: Option<(u64, Duration)>,
    /// The last precise reading.
    last: Option<Instant>,
    reported: f64,
}

impl Others {
    pub(super) fn new(now: Instant) -> Self {
        Others {
            share: 0.0,
            accrued_to: now,
            carry: 0.0,
            residual: 0.0,
            scale: None,
            last: None,
            reported: 0.0,
        }
    }

    /// The units other clients took from a bucket of `capacity` per `window` since the last
    /// accrual (fractions carried over).
    pub(super) fn accrue(&mut self, capacity: u64, window: Duration, now: Instant) -> u64 {
        let dt = now.saturating_duration_since(self.accrued_to).as_secs_f64();
        self.accrued_to = self.accrued_to.max(now);
        if self.share <= 0.0 || dt <= 0.0 {
            return 0;
        }
        let rate = capacity as f64 / window.as_secs_f64().max(1e-9);
        let units = self.carry + self.share * rate * dt;
        let whole = units.floor();
        self.carry = units - whole;
        if whole.is_finite() && whole > 0.0 {
            whole.min(u64::MAX as f64) as u64
        } else {
            0
        }
    }

    /// A reading put the server `off` seconds of refill below the model (negative: above) of a
    /// bucket of `scale` (capacity, window), and the model then moved `jump` seconds towards it
    /// (0 when the reading was within the model's tolerance). Only a `precise` reading (its
    /// resolution, in seconds) is evidence, and only against an earlier one of the same bucket;
    /// every reading's jump is remembered. Returns the new share when it moved by more than half a percent since it was
    /// last returned.
    pub(super) fn observe(
        &mut self,
        off: f64,
        jump: f64,
        precise: Option<f64>,
        scale: (u64, Duration),
        now: Instant,
    ) -> Option<f64> {
        if !(off.is_finite() && jump.is_finite()) {
            return None;
        }
        if self.scale != Some(scale) {
            // A limit changed: nothing before it compares; this reading starts over.
            self.scale = precise.map(|_| scale);
            self.last = precise.map(|_| now);
            self.residual = off - jump;
            return None;
        }
        if let Some(resolution) = precise {
            // A reading shows at most what the most other clients could take since the last
            // one, give or take its resolution: an outlier (an estimate settled since, a burst
            // of answers) is evidence of that much and no more.
            let since = self
                .last
                .map_or(0.0, |l| now.saturating_duration_since(l).as_secs_f64());
            let bound = resolution + OTHERS_MAX * since;
            let drift = (off - self.residual).clamp(-bound, bound);
            self.last = Some(now);
            self.share = (self.share + drift / OTHERS_TAU.as_secs_f64()).clamp(0.0, OTHERS_MAX);
            self.residual = off;
        }
        self.residual -= jump;
        ((self.share - self.reported).abs() > 0.005).then(|| {
            self.reported = self.share;
            self.share
        })
    }

    /// The share of the refill other clients are taken to use.
    pub(super) fn share(&self) -> f64 {
        self.share
    }
}

/// The share of the rate kept after a throttle (AWS SDK adaptive mode, CUBIC).
const THROTTLE_BETA: f64 = 0.7;
/// The time the rate takes to grow back to where it was throttled. AWS's adaptive mode uses a
/// fixed cubic constant, which at the rates of LLM APIs (about a request per second) grows back
/// within a second and is throttled again at once; scaling the curve to this time makes one
/// throttle per cycle of a few dozen requests.
const THROTTLE_RECOVERY: Duration = Duration::from_secs(20);
/// The slowest pace: one request every 20 s.
const THROTTLE_MIN_RATE: f64 = 0.05;
/// The longest the rate takes to grow back, however slow the server.
const THROTTLE_RECOVERY_MAX: Duration = Duration::from_secs(120);
/// Where a key without rate-limit headers starts, before its first throttle: a request a
/// second ([`Throttle::slow_start`]).
const SLOW_START_RATE: f64 = 1.0;
/// Before the first throttle the rate doubles this often.
const SLOW_START_DOUBLING: Duration = Duration::from_secs(4);
/// The requests a starting key may have out at once before its first answer.
const SLOW_START_WINDOW: u64 = 4;
/// Past this rate (reached after about half a minute) a slow start ends: the key is not limited
/// until a throttle comes.
pub(super) const SLOW_START_END: f64 = 256.0;
/// Requests a cycle of growing back takes at least (see [`Throttle::recovery`]).
const RECOVERY_REQUESTS: f64 = 40.0;
/// The window over which the requests a server accepted bound its rate.
pub(super) const ACCEPTED_WINDOW: Duration = Duration::from_secs(60);

/// What a throttle says the server's rate is at most: the rate the key was sending
/// (`measured`), or the rate the server `accepted` over [`ACCEPTED_WINDOW`] when the key sent
/// faster than that (else it only measures the key's own pace). A server whose bucket holds a
/// minute of refill accepts at most twice its rate over any minute, whatever burst it first
/// allowed: this bounds the rate within a cut or two, instead of one cut per throttle down from
/// the burst that met the first.
fn bound(measured: f64, accepted: f64) -> f64 {
    if measured > accepted * 1.2 {
        accepted
    } else {
        measured
    }
}

/// A request rate learned from throttles alone, for servers that send no rate-limit headers
/// (Bedrock, Vertex, gateways): CUBIC as in the AWS SDKs' adaptive retry mode. After a throttle
/// the rate drops to [`THROTTLE_BETA`] of what was sent, grows back along a cubic curve to that
/// rate within [`THROTTLE_RECOVERY`], then probes beyond it, faster the longer no throttle comes.
/// Requests are spaced at the current rate, never sent in bursts.
///
/// Before the first throttle a key starts slowly ([`Throttle::slow_start`]), as TCP does: a
/// server's bucket can hold a minute of refill, and a fleet of callers that sends unpaced into
/// it drains it within a second; every request in flight when the first refusal comes back
/// is refused too. Growing from [`SLOW_START_RATE`], doubling every [`SLOW_START_DOUBLING`],
/// meets the empty bucket at a rate a few times the server's, not at the callers' full
/// concurrency, and ends past [`SLOW_START_END`], where the key is no longer paced.
#[derive(Clone, Debug)]
pub(super) struct Throttle {
    w_max: f64,
    /// Set while the rate grows exponentially from `w_max`, before any throttle.
    slow_start: bool,
    cut_at: Instant,
    /// Dispatches before the last cut: a throttle of one of them is the same episode.
    pub(super) cut_seq: u64,
    next_at: Instant,
    /// Refusals in a row, each of a request sent after the one before, with nothing accepted
    /// in between: the server is in debt (a bucket that went below zero refuses whatever the
    /// pace until its refill catches up), so the gap doubles with each, as TCP's
    /// retransmission timer does, up to [`MAX_STREAK`] doublings.
    streak: u32,
    /// Dispatches before the last refusal counted in the streak.
    streak_seq: u64,
    /// While starting: how many requests may be out at once, one more for each accepted
    /// answer (TCP's congestion window in slow start).
    window: u64,
}

/// The most doublings of the gap a streak of refusals brings.
const MAX_STREAK: u32 = 5;

impl Throttle {
    /// The first throttle, when the key was sending at `measured` requests per second and the
    /// server `accepted` lately (see [`bound`]).
    pub(super) fn new(measured: f64, accepted: f64, seq: u64, now: Instant) -> Self {
        let w_max = bound(measured, accepted).max(THROTTLE_MIN_RATE);
        Throttle {
            w_max,
            slow_start: false,
            cut_at: now,
            cut_seq: seq,
            next_at: now,
            streak: 0,
            streak_seq: seq,
            window: u64::MAX,
        }
    }

    /// A rate learned elsewhere (another process of a fleet), adopted as the rate reached at
    /// `now`: it grows from there as after a cut a recovery ago. The next request may go at
    /// `next_at`.
    pub(super) fn adopted(rate: f64, seq: u64, next_at: Instant, now: Instant) -> Self {
        let mut t = Throttle {
            w_max: rate.max(THROTTLE_MIN_RATE),
            slow_start: false,
            cut_at: now,
            cut_seq: seq,
            next_at,
            streak: 0,
            streak_seq: seq,
            window: u64::MAX,
        };
        let k = Duration::from_secs_f64(t.recovery());
        t.cut_at = now.checked_sub(k).unwrap_or(now);
        t
    }

    /// A key found to send no rate-limit headers: a slow start from [`SLOW_START_RATE`].
    pub(super) fn slow_start(seq: u64, now: Instant) -> Self {
        Throttle {
            w_max: SLOW_START_RATE,
            slow_start: true,
            cut_at: now,
            cut_seq: seq,
            next_at: now,
            streak: 0,
            streak_seq: seq,
            window: SLOW_START_WINDOW,
        }
    }

    /// Whether `in_flight` requests fill the window of a starting key: the next waits for an
    /// answer. A server that charges output as it is produced admits everything sent before its
    /// bucket runs dry and charges it afterwards; the rate alone let 27 callers' long answers
    /// (3,000 output tokens each, 14 s) put a 20,000-a-minute bucket four minutes in debt
    /// before the first throttle, and calls waited past their deadlines.
    pub(super) fn window_full(&self, in_flight: usize) -> bool {
        self.slow_start && in_flight as u64 >= self.window
    }

    /// Whether no throttle has come yet (the rate only grows).
    pub(super) fn starting(&self) -> bool {
        self.slow_start
    }

    /// The rate at `now`, in requests per second.
    pub(super) fn rate(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.cut_at).as_secs_f64();
        if self.slow_start {
            let doublings = (elapsed / SLOW_START_DOUBLING.as_secs_f64()).min(64.0);
            return (self.w_max * doublings.exp2()).min(SLOW_START_END);
        }
        let k = self.recovery();
        let x = (elapsed - k) / k;
        // Past 100 recovery times the cube is astronomical: stop there (the rate is then far
        // above any server's anyway).
        let x = x.min(100.0);
        let w = self.w_max * (1.0 + (1.0 - THROTTLE_BETA) * x * x * x);
        if w.is_finite() {
            w.max(THROTTLE_MIN_RATE)
        } else {
            THROTTLE_MIN_RATE
        }
    }

    /// When the next request may go.
    pub(super) fn ready_at(&self) -> Instant {
        self.next_at
    }

    /// A request was sent at `now`, the key sending at `pace` requests per second lately.
    pub(super) fn sent(&mut self, now: Instant, pace: f64) {
        if self.slow_start {
            // Grow only while the pace follows: a key held back by something else (a
            // concurrency cap, few callers) has not shown the server can take more (TCP's
            // congestion-window validation).
            let cap = 2.0 * pace.max(SLOW_START_RATE);
            if self.rate(now) > cap {
                self.w_max = cap;
                self.cut_at = now;
            }
        }
        self.next_at = self.next_at.max(now) + self.gap(now);
    }

    /// The gap between two sends at `now`: one over the rate, doubled by the streak, never
    /// longer than the slowest pace's (20 s).
    fn gap(&self, now: Instant) -> Duration {
        let gap = (1.0 / self.rate(now)) * f64::from(1u32 << self.streak);
        Duration::from_secs_f64(gap.min(1.0 / THROTTLE_MIN_RATE))
    }

    /// A request sent after dispatch `seq` was refused at `now`, the key at dispatch `last`:
    /// the streak grows (once per request sent after the previous refusal) and the next send
    /// waits a doubled gap.
    pub(super) fn refused(&mut self, seq: u64, last: u64, now: Instant) {
        if seq > self.streak_seq {
            self.streak = (self.streak + 1).min(MAX_STREAK);
            self.streak_seq = last;
            self.next_at = self.next_at.max(now + self.gap(now));
        }
    }

    /// Refusals in a row so far (see `streak`).
    pub(super) fn streak(&self) -> u32 {
        self.streak
    }

    /// The server accepted the request of dispatch `seq`: one sent after the last refusal ends
    /// the streak.
    pub(super) fn accepted(&mut self, seq: u64) {
        if seq > self.streak_seq {
            self.streak = 0;
        }
        if self.slow_start {
            self.window = self.window.saturating_add(1);
        }
    }

    /// Whether a throttle at `now` may cut again: not within two paced gaps (at least a
    /// second) of the last cut.
    pub(super) fn may_cut(&self, now: Instant) -> bool {
        let since = now.saturating_duration_since(self.cut_at).as_secs_f64();
        since >= (2.0 / self.rate(now)).max(1.0)
    }

    /// The time the rate takes to grow back after a cut: [`THROTTLE_RECOVERY`], or about
    /// [`RECOVERY_REQUESTS`] requests at the rate cut, whichever is longer (one throttle per
    /// cycle is then a small share of the requests, however slow the server).
    fn recovery(&self) -> f64 {
        (RECOVERY_REQUESTS / self.w_max).clamp(
            THROTTLE_RECOVERY.as_secs_f64(),
            THROTTLE_RECOVERY_MAX.as_secs_f64(),
        )
    }

    /// Another throttle: the rate drops to [`THROTTLE_BETA`] of the lower of the current rate
    /// and the [`bound`] of what the key sent and the server accepted.
    pub(super) fn cut(&mut self, measured: f64, accepted: f64, seq: u64, now: Instant) -> f64 {
        self.w_max = self
            .rate(now)
            .min(bound(measured, accepted))
            .max(THROTTLE_MIN_RATE);
        self.cut_at = now;
        self.cut_seq = seq;
        // The pace slows from now: the next slot is one new gap away at the latest.
        let gap = Duration::from_secs_f64(1.0 / self.rate(now));
        self.next_at = self.next_at.min(now + gap).max(now);
        self.rate(now)
    }
}

/// Instants of the most recent events of a key (sends, or requests the server accepted), at
/// most a fixed number, to measure a rate.
#[derive(Clone, Debug)]
pub(super) struct Recent {
    at: VecDeque<Instant>,
    kept: usize,
}

impl Recent {
    /// Sends: enough to measure the pace of a burst.
    pub(super) fn sends() -> Self {
        Recent {
            at: VecDeque::new(),
            kept: 16,
        }
    }

    /// Requests the server accepted: a minute's worth at thousands a minute.
    pub(super) fn accepted() -> Self {
        Recent {
            at: VecDeque::new(),
            kept: 4096,
        }
    }

    pub(super) fn push(&mut self, now: Instant) {
        if self.at.len() == self.kept {
            self.at.pop_front();
        }
        self.at.push_back(now);
    }

    /// Events per second from the oldest one kept up to `now` (one per second when fewer than
    /// two are kept).
    pub(super) fn pace(&self, now: Instant) -> f64 {
        match (self.at.front(), self.at.len()) {
            (Some(first), n) if n >= 2 => {
                let span = now.saturating_duration_since(*first).as_secs_f64();
                (n - 1) as f64 / span.max(0.001)
            }
            _ => 1.0,
        }
    }

    /// Events per second over the last `window` (infinite when none).
    pub(super) fn within(&self, window: Duration, now: Instant) -> f64 {
        let recent = self
            .at
            .iter()
            .filter(|at| now.saturating_duration_since(**at) <= window)
            .count();
        if recent == 0 {
            f64::INFINITY
        } else {
            recent as f64 / window.as_secs_f64()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_learns_a_40_percent_low_estimate_within_a_few_samples() {
        let mut r = Ratio::new(1.0, 0.2, 0.1, 10.0);
        for _ in 0..4 {
            r.observe(1.4);
        }
        assert!((1.3..=1.45).contains(&r.mean()), "mean {}", r.mean());
        assert!(r.high() >= r.mean());
    }

    /// An output share that starts at the whole `max_tokens` (a placeholder, no spread) and is
    /// 0.15–0.19 in every answer: after four answers its high quantile is near what answers use,
    /// not near the placeholder (it was 0.79 when the distance from the placeholder counted as
    /// spread, and each request then held most of a bucket).
    #[test]
    fn ratio_spread_is_the_samples_own() {
        let mut r = Ratio::new(1.0, 0.0, 0.01, 1.0);
        for i in 0..4 {
            r.observe(if i % 2 == 0 { 0.15 } else { 0.19 });
        }
        assert!(r.high() < 0.35, "high {}", r.high());
        assert!(r.high() >= 0.19 * 0.99, "high {}", r.high());
        // A genuine prior's spread still counts while there are few samples.
        let mut r = Ratio::new(1.0, 0.2, 0.1, 10.0);
        r.observe(1.0);
        assert!(r.high() > 1.2, "high {}", r.high());
    }

    #[test]
    fn ratio_high_quantile_covers_the_spread() {
        let mut r = Ratio::new(1.0, 0.2, 0.1, 10.0);
        for i in 0..200 {
            r.observe(if i % 2 == 0 { 0.8 } else { 1.2 });
        }
        assert!(r.high() >= 1.2, "high {}", r.high());
        assert!(!r.observe(f64::NAN) && !r.observe(0.0) && !r.observe(-1.0));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_doubles_while_the_pace_follows_and_ends() {
        let now = Instant::now();
        let mut t = Throttle::slow_start(0, now);
        assert!(t.starting());
        assert!((t.rate(now) - SLOW_START_RATE).abs() < 1e-9);
        let later = now + SLOW_START_DOUBLING * 3;
        assert!((t.rate(later) - 8.0 * SLOW_START_RATE).abs() < 1e-9);
        // Sends at 1 a second, held back by something else: the rate stays within twice that.
        t.sent(later, 1.0);
        assert!((t.rate(later) - 2.0).abs() < 1e-9, "{}", t.rate(later));
        // Grows again from there, and never past the end of the slow start.
        assert!((t.rate(later + SLOW_START_DOUBLING) - 4.0).abs() < 1e-9);
        assert_eq!(t.rate(later + SLOW_START_DOUBLING * 100), SLOW_START_END);
        // The first throttle ends it: a cut below what was being sent.
        let c = Throttle::new(3.0, f64::INFINITY, 1, later);
        assert!(!c.starting());
        assert!((c.rate(later) - 2.1).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_in_a_row_double_the_gap_until_one_is_accepted() {
        let now = Instant::now();
        let mut t = Throttle::new(1.0 / 0.7, f64::INFINITY, 10, now);
        // The first throttle's own request (dispatch 10) starts no streak.
        t.refused(10, 10, now);
        t.sent(now, 1.0);
        assert_eq!(t.ready_at(), now + Duration::from_secs(1));
        // A request sent after it refused too: the next gap doubles, then doubles again.
        t.refused(11, 12, now);
        assert_eq!(t.ready_at(), now + Duration::from_secs(2));
        t.refused(12, 12, now);
        assert_eq!(
            t.ready_at(),
            now + Duration::from_secs(2),
            "sent before: counted once"
        );
        t.refused(13, 13, now);
        t.sent(now, 1.0);
        assert_eq!(t.ready_at(), now + Duration::from_secs(4 + 4));
        // An answer to a request sent before the last refusal proves nothing; a later one
        // ends the streak.
        t.accepted(13);
        t.sent(now, 1.0);
        assert_eq!(t.ready_at(), now + Duration::from_secs(12));
        t.accepted(14);
        t.sent(now, 1.0);
        assert_eq!(t.ready_at(), now + Duration::from_secs(13));
    }

    #[tokio::test(start_paused = true)]
    async fn margin_doubles_and_decays() {
        let mut m = Margin::default();
        let now = Instant::now();
        assert_eq!(m.get(10_000, now), 0);
        m.raise(None, 0.05, now);
        assert_eq!(m.get(10_000, now), 500);
        m.raise(None, 0.05, now);
        assert_eq!(m.get(10_000, now), 1_000);
        m.raise(Some(0.05), 0.05, now);
        assert_eq!(m.get(10_000, now), 2_000, "doubles: it lacked less");
        m.raise(Some(0.3), 0.05, now);
        assert_eq!(m.get(10_000, now), 5_000, "what it had and what it lacked");
        m.raise(None, 0.05, now);
        assert_eq!(m.get(100, now), 50, "at most half the capacity");
        // Quiet: the doubling decays within minutes, what the refusals showed was needed (the
        // 0.5 the last one had) within an hour.
        let mut quiet = Margin::default();
        quiet.raise(Some(0.02), 0.01, now);
        quiet.raise(None, 0.01, now);
        assert_eq!(quiet.get(10_000, now), 400);
        let later = now + MARGIN_DECAY * 3;
        assert_eq!(
            quiet.get(10_000, later),
            156,
            "the needed 0.02, 15 minutes on"
        );
        assert!(
            quiet.share_at(later) < 0.0021,
            "a store gets only the doubling, decayed: {}",
            quiet.share_at(later)
        );
        let much_later = now + MARGIN_MEMORY * 3;
        assert_eq!(quiet.get(10_000, much_later), 10);
        assert_eq!(m.get(100, much_later), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_cuts_then_grows_back_and_beyond() {
        let now = Instant::now();
        let mut t = Throttle::new(2.0, f64::INFINITY, 1, now);
        assert!((t.rate(now) - 1.4).abs() < 1e-9);
        assert!((t.rate(now + THROTTLE_RECOVERY) - 2.0).abs() < 1e-9);
        assert!(t.rate(now + THROTTLE_RECOVERY * 2) > 2.5);
        let r = t.cut(1.0, f64::INFINITY, 5, now + THROTTLE_RECOVERY);
        assert!((r - 0.7).abs() < 1e-9);
        assert!(t.rate(now + THROTTLE_RECOVERY * 1000) > 0.0);
    }
}

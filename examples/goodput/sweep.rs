//! The robustness sweep: seeded server behaviours drawn across everything the simulated API can
//! be (when headers are computed, their dialect, how input and output are counted, output shares, other
//! clients, limits of several tiers, latency, 529s, concurrency, workload size), each run with
//! `ours` only, and the targets `--check` holds every point to.

use std::time::Duration;

use tower_llm_limits_sim::Dimension;
use tower_llm_limits_sim::{Fault, Faults, StreamBreak};
use tower_llm_limits_sim::{HeaderDialect, HeaderTiming, InputCounting, OutputAccounting};

use super::{Model, Row, SONNET, Scenario, Server, Sizes};

/// Points with rate-limit headers.
pub const HEADER_POINTS: usize = 64;
/// Header-less (Bedrock-style) points, after those.
pub const HEADERLESS_POINTS: usize = 8;
/// The seed of the draws.
const SWEEP_SEED: u64 = 0x5eed_0017;
/// The seed of each point's output accounting, drawn apart from the other draws (added after
/// them: the points' other parameters stay what they were).
const ACCOUNTING_SEED: u64 = 0x5eed_0a11;
/// The share of points whose server reserves `max_tokens` at admission (the older documented
/// accounting); the others charge output as produced (the current one).
const RESERVE_SHARE: f64 = 1.0 / 3.0;
/// The seed of each point's `max_tokens` style, drawn apart like the accounting.
const LONG_SEED: u64 = 0x5eed_1096;
/// The share of points whose callers ask for a long `max_tokens` ([`LONG_MAX_TOKENS`], up to
/// twice Tier 1's output limit) and use a small part of it ([`LONG_OUTPUT_SHARE`]), as
/// applications that set `max_tokens` to the model's ceiling do.
const LONG_SHARE: f64 = 0.25;
const LONG_MAX_TOKENS: std::ops::RangeInclusive<u64> = 4_096..=16_000;
const LONG_OUTPUT_SHARE: (f64, f64) = (0.02, 0.3);

/// Targets of a point with rate-limit headers: no failed call, 429s under 1 % of attempts,
/// T*/T at least 0.95; the median T*/T of those points at least 0.97.
const MAX_429_SHARE: f64 = 0.01;
const MIN_RATIO: f64 = 0.95;
const MIN_MEDIAN_RATIO: f64 = 0.97;
/// Targets of a header-less point: no failed call, throttles under 5 %, T*/T at least 0.85.
const HEADERLESS_MAX_429_SHARE: f64 = 0.05;
const HEADERLESS_MIN_RATIO: f64 = 0.85;

/// The refill bound must be at least this many times the callers' bound (the sum of the
/// answers' latencies over the callers), so that the limits, not the round trips, set the pace.
const CONCURRENCY_MARGIN: u32 = 3;
/// The longest a call may have to wait its turn at the pace the limits allow (half the call
/// deadline, leaving room for a retry).
const MAX_QUEUE: Duration = Duration::from_secs(240);

/// A tier's limits and the request sizes its callers send (each point draws its prompt range
/// around the tier's): with these sizes the workload costs several minutes of the tier's budget.
struct Tier {
    name: &'static str,
    rpm: u64,
    itpm: u64,
    otpm: u64,
    input_tokens: std::ops::RangeInclusive<u64>,
    max_tokens: std::ops::RangeInclusive<u64>,
}

const TIERS: &[Tier] = &[
    // Anthropic's Tier 1 (Sonnet), the demo's organisation.
    Tier {
        name: "t1",
        rpm: 50,
        itpm: 30_000,
        otpm: 8_000,
        input_tokens: 200..=2_000,
        max_tokens: 256..=1_024,
    },
    // Tier 1 for a model with larger token limits.
    Tier {
        name: "t1-haiku",
        rpm: 50,
        itpm: 50_000,
        otpm: 10_000,
        input_tokens: 200..=2_000,
        max_tokens: 256..=1_024,
    },
    // The named scenarios' Sonnet.
    Tier {
        name: "bench",
        rpm: 200,
        itpm: 150_000,
        otpm: 50_000,
        input_tokens: 200..=2_000,
        max_tokens: 256..=1_024,
    },
    // Tier 2 with long prompts and answers.
    Tier {
        name: "t2",
        rpm: 1_000,
        itpm: 450_000,
        otpm: 90_000,
        input_tokens: 2_000..=20_000,
        max_tokens: 1_024..=4_096,
    },
    // Tier 3 with longer prompts.
    Tier {
        name: "t3",
        rpm: 2_000,
        itpm: 800_000,
        otpm: 160_000,
        input_tokens: 5_000..=30_000,
        max_tokens: 1_024..=4_096,
    },
    // A request-bound organisation (a low workspace RPM).
    Tier {
        name: "rpm20",
        rpm: 20,
        itpm: 200_000,
        otpm: 100_000,
        input_tokens: 200..=2_000,
        max_tokens: 256..=1_024,
    },
];

/// One point of the sweep.
pub struct Point {
    pub scenario: Scenario,
    pub headerless: bool,
    /// The point's parameters, `key:value,…`.
    pub params: String,
}

fn uniform(rng: &mut fastrand::Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.f64()
}

/// The points, in order: [`HEADER_POINTS`] with headers, then [`HEADERLESS_POINTS`] without.
/// The same build gives the same points.
///
/// Limits are the tier's, scaled down (×0.7 at a time) while the concurrency bound, the sum of
/// the answers' latencies over the callers, is more than a third of the refill bound: a point
/// whose time the callers' round trips set would measure the latency, not the pacing, and T*
/// (which does not count concurrency) would be out of reach for any client. The scaling stops
/// before a bucket gets smaller than 2.5 of the largest request. Limits are scaled up when a
/// call would have to wait its turn longer than [`MAX_QUEUE`] even at the best pace.
/// The sweep's points. Each point's streaming mix is drawn apart from its other draws
/// ([`streams`]); `stream_share` replaces its share of streaming requests for every point (`0`:
/// the sweep without streams). `seed` 0 draws the points CI checks; any other draws as many
/// other servers, to check the limiter on behaviours it was not built against.
pub fn points(stream_share: Option<f64>, seed: u64) -> Vec<Point> {
    // 0 leaves every seed as it is.
    let seed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let mut rng = fastrand::Rng::with_seed(SWEEP_SEED ^ seed);
    let mut accounting_rng = fastrand::Rng::with_seed(ACCOUNTING_SEED ^ seed);
    let mut long_rng = fastrand::Rng::with_seed(LONG_SEED ^ seed);
    (0..HEADER_POINTS + HEADERLESS_POINTS)
        .map(|i| {
            let headerless = i >= HEADER_POINTS;
            let timing = if rng.bool() {
                HeaderTiming::AtAnswer
            } else {
                HeaderTiming::AtAdmission
            };
            let dialect = if headerless {
                HeaderDialect::Bedrock
            } else if rng.bool() {
                HeaderDialect::Combined
            } else {
                HeaderDialect::Separate
            };
            let (counting, counting_name) = match rng.u8(0..3) {
                0 => (InputCounting::Text, "text".to_string()),
                1 => {
                    let ratio = uniform(&mut rng, 3.0, 4.5);
                    (
                        InputCounting::BodyBytes {
                            bytes_per_token: ratio,
                        },
                        format!("body{ratio:.2}"),
                    )
                }
                _ => {
                    let lo = uniform(&mut rng, 2.0, 3.0);
                    let hi = uniform(&mut rng, 4.0, 5.0);
                    (
                        InputCounting::VaryingDensity {
                            min_bytes_per_token: lo,
                            max_bytes_per_token: hi,
                        },
                        format!("density{lo:.2}-{hi:.2}"),
                    )
                }
            };
            let out_lo = uniform(&mut rng, 0.1, 1.0);
            let out_hi = uniform(&mut rng, out_lo, 1.0);
            let others = uniform(&mut rng, 0.0, 0.3);
            let tier = &TIERS[rng.usize(0..TIERS.len())];
            let base = Duration::from_millis(rng.u64(100..=1_500));
            let per_token = Duration::from_micros(rng.u64(0..=6_000));
            let r529 = uniform(&mut rng, 0.0, 0.03);
            let callers = rng.usize(8..=64);
            let requests = rng.usize(200..=600);
            let streams = streams(i, stream_share, seed);
            let accounting = if accounting_rng.f64() < RESERVE_SHARE {
                OutputAccounting::ReserveMaxTokens
            } else {
                OutputAccounting::AsProduced
            };
            let long = long_rng.f64() < LONG_SHARE;
            // A server reserving `max_tokens` refuses a request above its output limit for
            // ever: long requests go to servers counting output as produced.
            let accounting = if long {
                OutputAccounting::AsProduced
            } else {
                accounting
            };
            // Output shares drawn in 0.1..1 are moved into the long requests' range.
            let (out_lo, out_hi) = if long {
                let (lo, hi) = LONG_OUTPUT_SHARE;
                let scale = |x: f64| lo + (x - 0.1) / 0.9 * (hi - lo);
                (scale(out_lo), scale(out_hi))
            } else {
                (out_lo, out_hi)
            };

            let server = Server {
                timing,
                dialect,
                counting,
                other_clients: others,
                latency: Some((base, per_token)),
                overloaded: r529,
                accounting,
            };
            // The prompts: a range drawn around the tier's (the smallest from 1 to 3 times its
            // smallest, the largest from 0.75 to 1.5 times its largest).
            let (in_lo, in_hi) = (*tier.input_tokens.start(), *tier.input_tokens.end());
            let in_lo = rng.u64(in_lo..=3 * in_lo);
            let in_hi = rng.u64(in_hi * 3 / 4..=in_hi * 3 / 2);
            let sizes = Sizes {
                input_tokens: in_lo..=in_hi,
                max_tokens: if long {
                    LONG_MAX_TOKENS
                } else {
                    tier.max_tokens.clone()
                },
                output_fraction: out_lo..=out_hi,
                stream_share: streams.share,
            };
            let scenario = |scale: f64| {
                let scaled = |x: u64| ((x as f64 * scale).round() as u64).max(1);
                Scenario {
                    name: format!("sweep-{i:02}"),
                    models: vec![Model {
                        name: SONNET.name,
                        rpm: scaled(tier.rpm),
                        itpm: scaled(tier.itpm),
                        otpm: scaled(tier.otpm),
                    }],
                    requests,
                    callers,
                    faults: streams.faults(),
                    upgrade: None,
                    server: server.clone(),
                    sizes: sizes.clone(),
                }
            };
            // The largest input a request of this tier may be charged (2 bytes per token of
            // text written at 4), and the smallest bucket allowed.
            let largest = in_hi * 2 + 200;
            // What the workload costs in each dimension, as the server charges it (the same
            // at every scale), and the callers' bound.
            let (costs, concurrency) = rt.block_on(async {
                let candidate = scenario(1.0);
                let api = candidate.api();
                let workload = candidate.workload();
                let costs: Vec<(Dimension, u64)> = workload
                    .bounds(&api)
                    .iter()
                    .map(|b| (b.dimension(), b.cost()))
                    .collect();
                let (base, per_token) = api.latency();
                let total: Duration = workload
                    .specs()
                    .iter()
                    .map(|s| base + per_token * s.output_tokens() as u32)
                    .sum();
                (costs, total / callers as u32)
            });
            // The refill bound at a scale, as `Workload::bounds` computes it (buckets full at
            // the start, the drain of other clients rounded down).
            let refill_at = |scale: f64| {
                let m = scenario(scale).models[0];
                costs
                    .iter()
                    .map(|&(dimension, cost)| {
                        let limit = match dimension {
                            Dimension::Requests => m.rpm,
                            Dimension::InputTokens => m.itpm,
                            Dimension::OutputTokens => m.otpm,
                            _ => m.itpm + m.otpm,
                        };
                        let drain = ((others * limit as f64).floor() as u64).min(limit - 1);
                        let beyond = cost.saturating_sub(limit);
                        Duration::from_secs_f64(beyond as f64 * 60.0 / (limit - drain) as f64)
                    })
                    .max()
                    .unwrap_or_default()
            };
            // Each caller waits its turn: at the pace the limits allow, a call takes about
            // `callers × refill / requests`. Beyond half the call deadline, calls would fail
            // whatever the client does: raise the limits (÷0.7 at a time) until it fits.
            let queue = |refill: Duration| refill * callers as u32 / requests as u32;
            let mut scale = 1.0;
            let mut refill = refill_at(scale);
            while refill < concurrency * CONCURRENCY_MARGIN {
                let next = scale * 0.7;
                let fits = (tier.itpm as f64 * next) >= 2.5 * largest as f64
                    && (tier.rpm as f64 * next) >= 2.0;
                if !fits || queue(refill_at(next)) > MAX_QUEUE {
                    break;
                }
                scale = next;
                refill = refill_at(scale);
            }
            while queue(refill) > MAX_QUEUE {
                scale /= 0.7;
                refill = refill_at(scale);
            }
            let scenario = scenario(scale);
            let m = scenario.models[0];
            let mut params = format!(
                "timing:{},dialect:{},input:{counting_name},prompt:{in_lo}-{in_hi},output:{out_lo:.2}-{out_hi:.2},\
                 others:{others:.2},tier:{}x{scale:.2}={}/{}/{},latency:{:.2}s+{:.1}ms,\
                 r529:{r529:.3},callers:{callers},requests:{requests},refill:{:.0}s,\
                 concurrency_bound:{:.0}s,queue:{:.0}s",
                match (headerless, timing) {
                    (true, _) => "none",
                    (_, HeaderTiming::AtAnswer) => "answer",
                    _ => "admission",
                },
                match dialect {
                    HeaderDialect::Combined => "combined",
                    HeaderDialect::Bedrock => "bedrock",
                    _ => "separate",
                },
                tier.name,
                m.rpm,
                m.itpm,
                m.otpm,
                base.as_secs_f64(),
                per_token.as_secs_f64() * 1e3,
                refill.as_secs_f64(),
                concurrency.as_secs_f64(),
                queue(refill).as_secs_f64(),
            );
            if accounting == OutputAccounting::ReserveMaxTokens {
                params.push_str(",accounting:reserve");
            }
            if long {
                params.push_str(&format!(
                    ",max_tokens:{}-{}",
                    LONG_MAX_TOKENS.start(),
                    LONG_MAX_TOKENS.end()
                ));
            }
            if streams.share > 0.0 {
                params.push_str(&format!(
                    ",streams:{:.2},broken:{:.3}",
                    streams.share, streams.broken
                ));
            }
            Point {
                scenario,
                headerless,
                params,
            }
        })
        .collect()
}

/// A point's streaming mix: the share of its requests that stream, and the share of those the
/// server breaks after the head (each stream breaks at most once).
struct Streams {
    share: f64,
    broken: f64,
    /// Events sent before the break, per way of breaking.
    after: [usize; 3],
}

/// The most of a point's requests that stream.
const MAX_STREAM_SHARE: f64 = 0.6;
/// The most of a point's streams the server breaks mid-way.
const MAX_BROKEN_SHARE: f64 = 0.05;

/// Point `i`'s streaming mix, from a generator of its own (the point's other draws do not
/// depend on it): up to [`MAX_STREAM_SHARE`] of its requests stream (`share` instead, when
/// given), and up to [`MAX_BROKEN_SHARE`] of those break after 1 to 8 events, in equal parts an
/// in-stream `overloaded_error`, a dropped connection and a stall.
fn streams(i: usize, share: Option<f64>, seed: u64) -> Streams {
    let mut rng =
        fastrand::Rng::with_seed(SWEEP_SEED ^ seed ^ 0x5713_ea35_0000_0018 ^ ((i as u64) << 32));
    let drawn = uniform(&mut rng, 0.0, MAX_STREAM_SHARE);
    let broken = uniform(&mut rng, 0.0, MAX_BROKEN_SHARE);
    let after = [rng.usize(1..=8), rng.usize(1..=8), rng.usize(1..=8)];
    Streams {
        share: share.unwrap_or(drawn).clamp(0.0, 1.0),
        broken,
        after,
    }
}

impl Streams {
    /// The server's faults that break the streams (none without streams: the sim's fault draws
    /// of a point without streams stay those of the sweep before streams).
    fn faults(&self) -> Faults {
        if self.share <= 0.0 || self.broken <= 0.0 {
            return Faults::new();
        }
        let hows = [
            StreamBreak::Overloaded,
            StreamBreak::Disconnect,
            StreamBreak::Stall,
        ];
        hows.iter()
            .zip(self.after)
            .fold(Faults::new(), |faults, (&how, after_events)| {
                faults.always(Fault::StreamBreak {
                    after_events,
                    how,
                    probability: self.broken / 3.0,
                })
            })
    }
}

fn share_429(r: &Row) -> f64 {
    r.r429 as f64 / r.attempts.max(1) as f64
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Prints the summary of the sweep (per group: how many points miss each target, the worst
/// cases, the median) and returns the misses, one line each. `min_ratio` replaces the per-point
/// T*/T target of the points with headers when given (`--min-ratio`: CI holds the sweep to a
/// floor below the 0.95 while a point misses that; BENCHMARKS.md says which).
pub fn summarise(rows: &[(Row, bool, String)], min_ratio: Option<f64>) -> Vec<String> {
    let mut misses = Vec::new();
    for headerless in [false, true] {
        let group: Vec<&(Row, bool, String)> =
            rows.iter().filter(|(_, h, _)| *h == headerless).collect();
        if group.is_empty() {
            continue;
        }
        let (label, max_429, min_ratio) = if headerless {
            (
                "header-less",
                HEADERLESS_MAX_429_SHARE,
                HEADERLESS_MIN_RATIO,
            )
        } else {
            (
                "with headers",
                MAX_429_SHARE,
                min_ratio.unwrap_or(MIN_RATIO),
            )
        };
        let (mut failing, mut refused, mut slow, mut any) = (0, 0, 0, 0);
        for (r, _, params) in &group {
            let mut missed = false;
            if r.failed > 0 {
                failing += 1;
                missed = true;
                misses.push(format!(
                    "{}: {} failed calls ({params})",
                    r.scenario, r.failed
                ));
            }
            if share_429(r) >= max_429 {
                refused += 1;
                missed = true;
                misses.push(format!(
                    "{}: {} 429s in {} attempts, {:.1} % (target: under {:.0} %) ({params})",
                    r.scenario,
                    r.r429,
                    r.attempts,
                    100.0 * share_429(r),
                    100.0 * max_429
                ));
            }
            if r.ratio() < min_ratio {
                slow += 1;
                missed = true;
                misses.push(format!(
                    "{}: T*/T = {:.3} (target: at least {min_ratio}) ({params})",
                    r.scenario,
                    r.ratio()
                ));
            }
            any += usize::from(missed);
        }
        let median_ratio = median(group.iter().map(|(r, _, _)| r.ratio()).collect());
        if !headerless && (median_ratio.is_nan() || median_ratio < MIN_MEDIAN_RATIO) {
            misses.push(format!(
                "sweep: median T*/T = {median_ratio:.3} (target: at least {MIN_MEDIAN_RATIO})"
            ));
        }
        println!(
            "sweep {label}: {} points, {any} miss a target: {failing} with failed calls, \
             {refused} with ≥ {:.0} % of attempts 429, {slow} with T*/T < {min_ratio}; \
             median T*/T {median_ratio:.3}; {} calls broken by the server (streams, not \
             counted as failed)",
            group.len(),
            100.0 * max_429,
            group.iter().map(|(r, _, _)| r.broken).sum::<usize>()
        );
        let worst = |key: &dyn Fn(&Row) -> f64, what: &str, all: bool| {
            let worst = group
                .iter()
                .filter(|(r, _, _)| all || r.failed == 0)
                .max_by(|a, b| key(&a.0).total_cmp(&key(&b.0)));
            if worst.is_none() {
                println!("sweep {label} worst {what}: none");
            }
            if let Some((r, _, params)) = worst {
                println!(
                    "sweep {label} worst {what}: {} ok={} failed={} attempts={} r429={} ({:.1} %) \
                     ratio={:.3} params={params}",
                    r.scenario,
                    r.ok,
                    r.failed,
                    r.attempts,
                    r.r429,
                    100.0 * share_429(r),
                    r.ratio()
                );
            }
        };
        // T*/T means something only when every call completed (failed calls end early).
        worst(
            &|r| -r.ratio(),
            "T*/T (of the points that completed every call)",
            false,
        );
        worst(&share_429, "429 share", true);
        worst(&|r| r.failed as f64, "failed calls", true);
    }
    misses
}

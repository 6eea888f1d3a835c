use super::*;

fn key() -> RateLimitKey {
    RateLimitKey::global()
}

fn send(state: &RateLimitState, cost: Cost, exact: bool) -> Ticket {
    let mut t = state
        .enter(&key(), cost, exact, Priority::Interactive, None, None)
        .unwrap();
    assert!(t.is_admitted(), "not admitted: {t:?}");
    t.dispatched();
    t
}

/// Enters a small request (one request, 10 tokens each way) as the attempt of a call at `place`.
fn enter_small(state: &RateLimitState, place: Option<&CallPlace>) -> Ticket {
    state
        .enter(
            &key(),
            Cost::new(1, 10, 10),
            true,
            Priority::Interactive,
            None,
            place,
        )
        .unwrap()
}

/// Sends `cost` when it is admitted at once; else gives the place back and lets 100 ms
/// pass.
async fn send_or_wait(state: &RateLimitState, cost: Cost, exact: bool) -> Option<Ticket> {
    let mut t = state
        .enter(&key(), cost, exact, Priority::Interactive, None, None)
        .unwrap();
    if !t.is_admitted() {
        drop(t);
        tokio::time::advance(Duration::from_millis(100)).await;
        return None;
    }
    t.dispatched();
    Some(t)
}

fn reply(t: &mut Ticket, snapshot: &RateLimitSnapshot, outcome: Outcome) -> Option<Instant> {
    t.complete_with(Reply {
        snapshot,
        outcome: &outcome,
        received: Instant::now(),
        usage: None,
        input: None,
        streaming: false,
    })
}

/// A successful answer with `snapshot`'s readings and `usage` (known with the head); a stream's
/// head when `streaming`.
fn answer(t: &mut Ticket, snapshot: &RateLimitSnapshot, usage: Option<Usage>, streaming: bool) {
    t.complete_with(Reply {
        snapshot,
        outcome: &Outcome::success(),
        received: Instant::now(),
        usage,
        input: None,
        streaming,
    });
}

fn level(state: &RateLimitState, d: Dimension) -> u64 {
    state
        .key_snapshot(&key())
        .unwrap()
        .bucket(d)
        .unwrap()
        .level()
}

/// What the key learned of its server's output accounting (`Some(true)`: counted as produced).
fn counted_as_produced(state: &RateLimitState) -> Option<bool> {
    state
        .key_snapshot(&key())
        .unwrap()
        .output_counted_as_produced()
}

fn reading(limit: u64, remaining: u64, reset_ms: u64) -> BucketReading {
    BucketReading::new(
        Some(limit),
        Some(remaining),
        Some(Duration::from_millis(reset_ms)),
    )
}

fn remaining_only(limit: u64, remaining: u64) -> BucketReading {
    BucketReading::new(Some(limit), Some(remaining), None)
}

#[tokio::test(start_paused = true)]
async fn probe_then_limits_learned_from_anthropic_headers() {
    let state = RateLimitState::new();
    let mut probe = send(&state, Cost::new(1, 1_000, 500), true);
    // Nothing known: up to STARTUP_PROBES requests go, the next waits for the first answer.
    let others: Vec<Ticket> = (1..STARTUP_PROBES)
        .map(|_| send(&state, Cost::new(1, 0, 0), true))
        .collect();
    let waiting = enter_small(&state, None);
    assert!(!waiting.is_admitted());
    let snapshot = RateLimitSnapshot::new()
        .with_dialect(Dialect::Anthropic)
        .with(Dimension::Requests, reading(50, 49, 2_000))
        .with(Dimension::InputTokens, reading(30_000, 29_000, 2_000))
        .with(Dimension::OutputTokens, reading(8_000, 8_000, 0))
        .with(Dimension::Tokens, reading(30_000, 29_000, 2_000));
    reply(&mut probe, &snapshot, Outcome::success());
    let snap = state.key_snapshot(&key()).unwrap();
    for (d, cap) in [
        (Dimension::Requests, 50),
        (Dimension::InputTokens, 30_000),
        (Dimension::OutputTokens, 8_000),
    ] {
        assert_eq!(snap.bucket(d).unwrap().capacity(), cap);
        assert_eq!(snap.bucket(d).unwrap().learned(), Some(cap));
    }
    // The `tokens` reading duplicates the input bucket: no combined bucket.
    assert!(snap.bucket(Dimension::Tokens).is_none());
    // Requests: exact (1 used, and the other probes sent after it). Input: 29,000 ± 500 and a 2 s reset (−2 s, +1 s):
    // conservative edge 1,500 used. Output: the reading holds no output of the probe, whose
    // 500 reserved stay, and the reset's +1 s (134 tokens at 8,000/min).
    assert_eq!(level(&state, Dimension::Requests), 49 - others.len() as u64);
    assert_eq!(level(&state, Dimension::InputTokens), 28_500);
    assert_eq!(level(&state, Dimension::OutputTokens), 8_000 - 134 - 500);
}

#[tokio::test(start_paused = true)]
async fn requests_in_flight_are_counted_once() {
    let state = RateLimitState::with_limits(Limits::new().input_tokens(30_000));
    let mut a = send(&state, Cost::new(1, 1_000, 0), true);
    let _b = send(&state, Cost::new(1, 2_000, 0), true);
    assert_eq!(level(&state, Dimension::InputTokens), 27_000);
    // a's reading agrees with the local state once b (sent after a) is added: unchanged.
    let agree =
        RateLimitSnapshot::new().with(Dimension::InputTokens, remaining_only(30_000, 29_000));
    reply(&mut a, &agree, Outcome::success());
    assert_eq!(level(&state, Dimension::InputTokens), 27_000);
    // Someone else spent 1,000: the server says less, the local state follows at once.
    let mut c = send(&state, Cost::new(1, 1_000, 0), true);
    let less =
        RateLimitSnapshot::new().with(Dimension::InputTokens, remaining_only(30_000, 25_000));
    reply(&mut c, &less, Outcome::success());
    assert_eq!(level(&state, Dimension::InputTokens), 25_000);
}

#[tokio::test(start_paused = true)]
async fn output_over_reservation_is_given_back_by_later_readings() {
    let state = RateLimitState::with_limits(Limits::new().output_tokens(8_000));
    let mut a = send(&state, Cost::new(1, 0, 1_000), true);
    // Read at admission: no output counted yet. a's reservation stays.
    let first = output_left(8_000);
    reply(&mut a, &first, Outcome::success());
    assert_eq!(level(&state, Dimension::OutputTokens), 7_000);
    // b's reading shows a's true output (300): 700 come back.
    let mut b = send(&state, Cost::new(1, 0, 1_000), true);
    assert_eq!(level(&state, Dimension::OutputTokens), 6_000);
    let second = output_left(7_700);
    reply(&mut b, &second, Outcome::success());
    assert_eq!(level(&state, Dimension::OutputTokens), 6_700);
    // A response without headers but with a known usage gives back the rest.
    let mut c = send(&state, Cost::new(1, 0, 1_000), true);
    answer(
        &mut c,
        &RateLimitSnapshot::new(),
        Some(Usage::new(0, 100)),
        false,
    );
    assert_eq!(level(&state, Dimension::OutputTokens), 6_600);
}

/// A known usage settles the reservation at the response, headers or not.
#[tokio::test(start_paused = true)]
async fn usage_settles_the_output_reservation_at_the_response() {
    let state = RateLimitState::with_limits(Limits::new().output_tokens(8_000));
    let mut a = send(&state, Cost::new(1, 0, 1_000), true);
    let mut b = send(&state, Cost::new(1, 0, 1_000), true);
    assert_eq!(level(&state, Dimension::OutputTokens), 6_000);
    // Read at a's admission: nothing produced yet; a produced 300. The reading (± 500)
    // agrees with 6,700 left, so only the usage can give the 700 back.
    let reading = RateLimitSnapshot::new()
        .with_dialect(Dialect::Anthropic)
        .with(Dimension::OutputTokens, remaining_only(8_000, 8_000));
    answer(&mut a, &reading, Some(Usage::new(0, 300)), false);
    assert_eq!(level(&state, Dimension::OutputTokens), 6_700);
    answer(&mut b, &reading, Some(Usage::new(0, 1_000)), false);
    assert_eq!(level(&state, Dimension::OutputTokens), 6_700);
}

/// The head of a stream comes before its output. While the server may hold `max_tokens` until
/// the stream ends (its output accounting not proved), the reservation stays until the stream's
/// usage settles it; a whole answer's head settles it at once to the learned share. Once output
/// is known to be counted as produced, a stream's head settles it like a whole answer's.
#[tokio::test(start_paused = true)]
async fn a_streams_output_reservation_is_held_until_its_usage() {
    // Answers that use 300 of their 2,000 teach the share; returns what a head gives back.
    async fn given_back(state: &RateLimitState, streaming: bool) -> u64 {
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(5)).await;
            let mut t = send(state, Cost::new(1, 0, 2_000), true);
            answer(
                &mut t,
                &RateLimitSnapshot::new(),
                Some(Usage::new(0, 300)),
                false,
            );
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        let before = level(state, Dimension::OutputTokens);
        let mut t = send(state, Cost::new(1, 0, 2_000), true);
        answer(&mut t, &RateLimitSnapshot::new(), None, streaming);
        level(state, Dimension::OutputTokens) + 2_000 - before
    }
    let state = RateLimitState::with_limits(Limits::new().output_tokens(8_000));
    assert!(
        given_back(&state, false).await > 0,
        "a whole answer settles at its head"
    );
    let state = RateLimitState::with_limits(Limits::new().output_tokens(8_000));
    assert_eq!(
        given_back(&state, true).await,
        0,
        "a stream's head holds it"
    );
    // The stream's usage settles it.
    let mut a = enter_output(&state, 2_000).unwrap();
    assert!(a.is_admitted());
    let report = a.usage_report();
    a.dispatched();
    answer(&mut a, &RateLimitSnapshot::new(), None, true);
    let held = level(&state, Dimension::OutputTokens);
    report.report(Usage::new(0, 300));
    assert_eq!(level(&state, Dimension::OutputTokens), held + 1_700);

    let (state, _c) = prove_counted_as_produced();
    assert!(
        given_back(&state, true).await > 0,
        "counted as produced: settled at the head"
    );
}

/// A head settles an unknown output at its reservation; when the body's `usage` shows less,
/// a later reading taken before that answer ended counts the true figure, not the settled one
/// (counting the settled one put a key with `max_tokens` above the output limit minutes in debt
/// at start-up, and its callers past their deadlines).
#[tokio::test(start_paused = true)]
async fn a_reading_counts_what_usage_showed_not_what_the_head_settled() {
    let state = RateLimitState::with_limits(Limits::new().output_tokens(8_000));
    let mut a = enter_output(&state, 2_000).unwrap();
    let report = a.usage_report();
    a.dispatched();
    let mut b = send(&state, Cost::new(1, 0, 2_000), true);
    tokio::time::advance(Duration::from_secs(10)).await;
    reply(&mut a, &RateLimitSnapshot::new(), Outcome::success());
    report.report(Usage::new(0, 300));
    // Read when b was admitted, 10 s ago: 4,000 left (others used them), full in 30 s (the
    // reset rules out a reading taken at the answer). Since then a produced 300 and b 500:
    // full 6 s later, at the pessimistic edge of the rounding (± 500: 3.75 s).
    let snapshot = RateLimitSnapshot::new()
        .with_dialect(Dialect::Anthropic)
        .with(Dimension::OutputTokens, reading(8_000, 4_000, 20_000));
    answer(&mut b, &snapshot, Some(Usage::new(0, 500)), false);
    // Full 27 s from now (20 s, the rounding's 1 s and 6 s): 3,600 used.
    assert_eq!(level(&state, Dimension::OutputTokens), 4_400);
}

#[tokio::test(start_paused = true)]
async fn rate_limited_response_refunds_and_cools_down() {
    let state = RateLimitState::with_limits(Limits::new().requests(10));
    let mut a = send(&state, Cost::new(1, 0, 0), true);
    let outcome =
        Outcome::new(OutcomeKind::RateLimited).with_retry_after(Some(Duration::from_secs(7)));
    let until = reply(&mut a, &RateLimitSnapshot::new(), outcome);
    assert_eq!(until, Some(Instant::now() + Duration::from_secs(7)));
    assert_eq!(level(&state, Dimension::Requests), 10);
    let snap = state.key_snapshot(&key()).unwrap();
    assert_eq!(snap.cooldown_until(), until);
    let t = state
        .enter(
            &key(),
            Cost::new(1, 0, 0),
            true,
            Priority::Interactive,
            None,
            None,
        )
        .unwrap();
    assert!(!t.is_admitted());
}

#[tokio::test(start_paused = true)]
async fn openai_combined_tokens_and_configured_ceiling() {
    let state = RateLimitState::with_limits(Limits::new().requests(100));
    let mut a = send(&state, Cost::new(1, 1_000, 1_000), true);
    let snapshot = RateLimitSnapshot::new()
        .with_dialect(Dialect::OpenAi)
        .with(Dimension::Requests, reading(500, 499, 120))
        .with(Dimension::Tokens, reading(60_000, 58_000, 2_000));
    reply(&mut a, &snapshot, Outcome::success());
    let snap = state.key_snapshot(&key()).unwrap();
    // The configured 100 is a ceiling over the server's 500.
    assert_eq!(snap.bucket(Dimension::Requests).unwrap().capacity(), 100);
    assert_eq!(
        snap.bucket(Dimension::Requests).unwrap().learned(),
        Some(500)
    );
    assert_eq!(snap.bucket(Dimension::Tokens).unwrap().capacity(), 60_000);
    // A combined bucket is charged input + output.
    let _b = send(&state, Cost::new(1, 1_000, 1_000), true);
    assert_eq!(
        level(&state, Dimension::Tokens),
        snap.bucket(Dimension::Tokens).unwrap().level() - 2_000
    );
    // A lower limit from the server wins over the configured one.
    let mut c = send(&state, Cost::new(1, 0, 0), true);
    let lower = RateLimitSnapshot::new()
        .with_dialect(Dialect::OpenAi)
        .with(Dimension::Requests, reading(20, 10, 30_000));
    reply(&mut c, &lower, Outcome::success());
    let snap = state.key_snapshot(&key()).unwrap();
    assert_eq!(snap.bucket(Dimension::Requests).unwrap().capacity(), 20);
}

#[tokio::test(start_paused = true)]
async fn fixed_window_dialect_with_nothing_left_holds_until_reset() {
    let state = RateLimitState::with_limits(Limits::new().requests(100));
    let mut a = send(&state, Cost::new(1, 0, 0), true);
    let snapshot = RateLimitSnapshot::new()
        .with_dialect(Dialect::GitHub)
        .with(Dimension::Requests, reading(100, 0, 30_000));
    reply(&mut a, &snapshot, Outcome::success());
    let snap = state.key_snapshot(&key()).unwrap();
    assert_eq!(
        snap.cooldown_until(),
        Some(Instant::now() + Duration::from_secs(30))
    );
}

/// A configured ceiling below the server's limit, and a server bucket nearly emptied by
/// someone else: the wait is the server's refill time for the missing tokens (at the
/// server's rate), not the configured bucket's, and the ceiling still counts only this key's
/// own usage.
#[tokio::test(start_paused = true)]
async fn ceiling_below_server_limit_waits_for_the_server_refill() {
    let state = RateLimitState::with_limits(Limits::new().input_tokens(10_000));
    let mut a = send(&state, Cost::new(1, 1_000, 0), true);
    // Server: 150,000 ITPM (2,500 per second), 1,000 left after `a`: full again in 59.6 s.
    let snapshot = RateLimitSnapshot::new()
        .with_dialect(Dialect::Anthropic)
        .with(Dimension::InputTokens, reading(150_000, 1_000, 60_000));
    reply(&mut a, &snapshot, Outcome::success());
    assert_eq!(
        state
            .key_snapshot(&key())
            .unwrap()
            .bucket(Dimension::InputTokens)
            .unwrap()
            .capacity(),
        10_000
    );
    // 2,000 more: the server has 500..=1,500 (rounded to the thousand), so 0.2..=0.6 s of
    // its refill; our own ceiling has 9,000 left.
    let max = Duration::from_secs(2);
    let mut b = state
        .enter(
            &key(),
            Cost::new(1, 2_000, 0),
            true,
            Priority::Interactive,
            Some(max),
            None,
        )
        .expect("a 0.2-0.6 s wait is within a 2 s maximum");
    assert!(!b.is_admitted(), "the server bucket is nearly empty");
    let waker = std::task::Waker::noop();
    let Admission::Wait(Some(at)) = b.poll_admit(waker) else {
        panic!("expected a timed wait");
    };
    let wait = at.saturating_duration_since(Instant::now());
    assert!(
        wait >= Duration::from_millis(200) && wait <= Duration::from_millis(1_000),
        "wait {wait:?}"
    );
    tokio::time::advance(wait).await;
    assert!(matches!(b.poll_admit(waker), Admission::Admitted));
    // The ceiling counts this key's own usage: 1,000 + 2,000 of 10,000.
    let level = level(&state, Dimension::InputTokens);
    assert!((6_900..=7_100).contains(&level), "ceiling level {level}");
}

/// A server that charges 80% of the raw estimates: the correction factor converges there.
#[tokio::test(start_paused = true)]
async fn input_estimation_error_is_learned() {
    let window = Duration::from_secs(60);
    let state = RateLimitState::with_limits(Limits::new().input_tokens(6_000));
    let mut server = Bucket::new(6_000, window, Instant::now());
    for _ in 0..6_000 {
        let Some(mut t) = send_or_wait(&state, Cost::new(1, 500, 0), false).await else {
            continue;
        };
        let now = Instant::now();
        server.charge(400, now);
        let snapshot = RateLimitSnapshot::new().with(
            Dimension::InputTokens,
            remaining_only(6_000, server.level(now)),
        );
        reply(&mut t, &snapshot, Outcome::success());
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    let factor = state.key_snapshot(&key()).unwrap().input_correction();
    assert!((0.75..=0.85).contains(&factor), "factor {factor}");
}

/// A server counting output as produced: the share of `max_tokens` requests really produce
/// is learned from its readings (and stays at 1.0 when they produce all of it).
#[tokio::test(start_paused = true)]
async fn output_share_is_learned() {
    for (produced, range) in [(500, 0.4..=0.6), (1_000, 0.9..=1.0)] {
        let window = Duration::from_secs(60);
        let state = RateLimitState::with_limits(Limits::new().output_tokens(8_000));
        let mut server = Bucket::new(8_000, window, Instant::now());
        for _ in 0..3_000 {
            let Some(mut t) = send_or_wait(&state, Cost::new(1, 0, 1_000), true).await else {
                continue;
            };
            // Read at admission; the output is charged when the answer ends.
            let remaining = server.level(Instant::now());
            tokio::time::advance(Duration::from_millis(100)).await;
            server.charge(produced, Instant::now());
            let snapshot = RateLimitSnapshot::new()
                .with(Dimension::OutputTokens, remaining_only(8_000, remaining));
            reply(&mut t, &snapshot, Outcome::success());
        }
        let share = state.key_snapshot(&key()).unwrap().output_share();
        assert!(range.contains(&share), "produced {produced}: share {share}");
    }
}

/// A bucket of 8,000 output tokens with `remaining` left.
fn output_left(remaining: u64) -> RateLimitSnapshot {
    RateLimitSnapshot::new().with(Dimension::OutputTokens, remaining_only(8_000, remaining))
}

/// Enters a request of `max_tokens` output on a key with no other cost.
fn enter_output(state: &RateLimitState, max_tokens: u64) -> Result<Ticket, BoxError> {
    state.enter(
        &key(),
        Cost::new(1, 0, max_tokens),
        true,
        Priority::Interactive,
        None,
        None,
    )
}

/// Proves to a key that its server counts output as produced (a reading that shows none of the
/// `max_tokens` in flight used); returns the key's state and a request still in flight.
fn prove_counted_as_produced() -> (RateLimitState, Ticket) {
    let state = RateLimitState::with_limits(Limits::new().output_tokens(8_000));
    let mut a = send(&state, Cost::new(1, 0, 2_000), true);
    reply(&mut a, &output_left(8_000), Outcome::success());
    assert_eq!(counted_as_produced(&state), None);
    // Two requests of 2,000 in flight; the server, read at either instant, has used none.
    let mut b = send(&state, Cost::new(1, 0, 2_000), true);
    let c = send(&state, Cost::new(1, 0, 2_000), true);
    reply(&mut b, &output_left(8_000), Outcome::success());
    (state, c)
}

/// A server counting output as produced shows less used than the `max_tokens` in flight:
/// impossible under a reservation at admission.
#[tokio::test(start_paused = true)]
async fn a_reading_below_the_max_tokens_in_flight_proves_output_counted_as_produced() {
    let (state, _c) = prove_counted_as_produced();
    assert_eq!(counted_as_produced(&state), Some(true));
}

/// Under a reservation at admission the same readings show the `max_tokens` in flight used:
/// nothing is proved.
#[tokio::test(start_paused = true)]
async fn readings_that_hold_the_max_tokens_in_flight_prove_nothing() {
    let state = RateLimitState::with_limits(Limits::new().output_tokens(8_000));
    let mut a = send(&state, Cost::new(1, 0, 2_000), true);
    reply(&mut a, &output_left(6_000), Outcome::success());
    let mut b = send(&state, Cost::new(1, 0, 2_000), true);
    let _c = send(&state, Cost::new(1, 0, 2_000), true);
    // Read at b's admission: a's 2,000 came back, b's are held.
    reply(&mut b, &output_left(6_000), Outcome::success());
    assert_eq!(counted_as_produced(&state), None);
}

/// A 429 with room for the request's input and one output token but not for its
/// `max_tokens` proves a reservation at admission: a `max_tokens` above the output limit then
/// fails at once, where before it waited for a full bucket.
#[tokio::test(start_paused = true)]
async fn a_refusal_with_room_but_not_for_max_tokens_proves_a_reservation() {
    let state = RateLimitState::with_limits(Limits::new().output_tokens(8_000));
    let mut big = enter_output(&state, 9_000).unwrap();
    assert!(big.is_admitted(), "at most the whole bucket is reserved");
    big.dispatched();
    reply(
        &mut big,
        &output_left(6_000),
        Outcome::new(OutcomeKind::RateLimited),
    );
    assert_eq!(counted_as_produced(&state), Some(false));
    let e = enter_output(&state, 9_000).unwrap_err();
    assert!(e.is::<CostExceedsLimit>(), "{e}");
}

/// A refusal with the output bucket read empty is what a server counting output as produced
/// sends when it is in debt: it proves neither accounting, and the belief stays (going back to
/// reserving `max_tokens` held a long-`max_tokens` key to one request per bucket for minutes).
#[tokio::test(start_paused = true)]
async fn a_refusal_with_the_output_bucket_empty_keeps_output_counted_as_produced() {
    let (state, mut c) = prove_counted_as_produced();
    assert_eq!(counted_as_produced(&state), Some(true));
    reply(
        &mut c,
        &output_left(0),
        Outcome::new(OutcomeKind::RateLimited),
    );
    assert_eq!(counted_as_produced(&state), Some(true));
}

/// On a key paced on throttles alone, a refused call's retry queues behind as many waiting
/// calls as refusals came in a row and one more: not at the front (a server in debt refuses in
/// runs, which would all fall on this call's attempts), nor at the back (behind a queue minutes
/// deep, the second wait ran calls past a 10-minute deadline in the sweep).
#[tokio::test(start_paused = true)]
async fn a_header_less_retry_queues_behind_the_refusals_run_not_the_whole_queue() {
    let state = RateLimitState::builder().build();
    let place = CallPlace::default();
    let enter = |place: Option<&CallPlace>| enter_small(&state, place);
    let mut first = enter(Some(&place));
    assert!(first.is_admitted(), "the probe goes");
    first.dispatched();
    reply(
        &mut first,
        &RateLimitSnapshot::default(),
        Outcome::new(OutcomeKind::RateLimited),
    );
    // The first may go at once (its paced slot); the others wait, a gap apart.
    let (_gone, waiting): (Vec<Ticket>, Vec<Ticket>) =
        (0..6).map(|_| enter(None)).partition(Ticket::is_admitted);
    assert!(waiting.len() >= 5, "paced: {} wait", waiting.len());
    let retry = enter(Some(&place));
    let order = |t: &Ticket| match t.phase {
        Phase::Queued { id, .. } => id,
        _ => panic!("not queued: {t:?}"),
    };
    let ids: Vec<_> = waiting.iter().map(order).collect();
    let r = order(&retry);
    assert!(
        r > ids[0] && r < ids[1],
        "behind one waiting call: {r:?} in {ids:?}"
    );
}

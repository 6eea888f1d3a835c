//! Table-driven tests of the rate-limit header dialects and the retry hints. The property that
//! no header set makes the parsers panic or exceed their bounds is fuzzed once, in
//! `reliability_fuzz.rs`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use tower_llm_limits::signals::{
    BucketReading, Dialect, Dimension, MAX_HINT, MAX_RETRY_AFTER, RateLimitSnapshot, RetryHints,
    WaitSource,
};

/// 2026-11-23T09:14:00Z, the local clock of every case.
const NOW: u64 = 1_795_425_240;
const DATE: &str = "Mon, 23 Nov 2026 09:14:00 GMT";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn map(headers: &[(&str, &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    map
}

#[allow(non_snake_case)]
const fn S(s: u64) -> Option<Duration> {
    Some(Duration::from_secs(s))
}
#[allow(non_snake_case)]
const fn MS(ms: u64) -> Option<Duration> {
    Some(Duration::from_millis(ms))
}
#[allow(non_snake_case)]
const fn US(us: u64) -> Option<Duration> {
    Some(Duration::from_micros(us))
}
const MIN: Option<Duration> = Some(Duration::from_secs(60));

use Dimension::{InputTokens as In, OutputTokens as Out, Requests as Req, Tokens as Tok};

/// One expected bucket: dimension, limit, remaining, reset, window.
type Want = (
    Dimension,
    Option<u64>,
    Option<u64>,
    Option<Duration>,
    Option<Duration>,
);

struct Case {
    name: &'static str,
    headers: &'static [(&'static str, &'static [u8])],
    dialect: Option<Dialect>,
    want: &'static [Want],
}

fn check(case: &Case) {
    let snapshot = RateLimitSnapshot::from_headers_at(&map(case.headers), now());
    assert_eq!(snapshot.dialect(), case.dialect, "{}: dialect", case.name);
    let got: Vec<Want> = snapshot
        .iter()
        .map(|(d, r)| (d, r.limit(), r.remaining(), r.reset(), r.window()))
        .collect();
    assert_eq!(got, case.want, "{}", case.name);
    for (_, r) in snapshot.iter() {
        assert!(r.reset().is_none_or(|d| d <= MAX_HINT), "{}", case.name);
    }
}

macro_rules! cases {
    ($($name:literal: [$(($h:literal, $v:literal)),* $(,)?] => $dialect:expr, [$($want:expr),* $(,)?];)*) => {
        &[$(Case {
            name: $name,
            headers: &[$(($h, $v)),*],
            dialect: $dialect,
            want: &[$($want),*],
        }),*]
    };
}

const A: Option<Dialect> = Some(Dialect::Anthropic);
const O: Option<Dialect> = Some(Dialect::OpenAi);
const IS: Option<Dialect> = Some(Dialect::IetfStructured);
const IL: Option<Dialect> = Some(Dialect::IetfLegacy);
const GH: Option<Dialect> = Some(Dialect::GitHub);

static CASES: &[Case] = cases! {
    // ---- Anthropic ----
    "anthropic full set": [
        ("date", b"Mon, 23 Nov 2026 09:14:00 GMT"),
        ("anthropic-ratelimit-requests-limit", b"50"),
        ("anthropic-ratelimit-requests-remaining", b"49"),
        ("anthropic-ratelimit-requests-reset", b"2026-11-23T09:14:01Z"),
        ("anthropic-ratelimit-input-tokens-limit", b"30000"),
        ("anthropic-ratelimit-input-tokens-remaining", b"29000"),
        ("anthropic-ratelimit-input-tokens-reset", b"2026-11-23T09:14:02Z"),
        ("anthropic-ratelimit-output-tokens-limit", b"8000"),
        ("anthropic-ratelimit-output-tokens-remaining", b"8000"),
        ("anthropic-ratelimit-output-tokens-reset", b"2026-11-23T09:14:00Z"),
        ("anthropic-ratelimit-tokens-limit", b"38000"),
        ("anthropic-ratelimit-tokens-remaining", b"37000"),
        ("anthropic-ratelimit-tokens-reset", b"2026-11-23T09:14:02Z"),
        ("request-id", b"req_011CV"),
    ] => A, [
        (Req, Some(50), Some(49), S(1), MIN),
        (In, Some(30000), Some(29000), S(2), MIN),
        (Out, Some(8000), Some(8000), S(0), MIN),
        (Tok, Some(38000), Some(37000), S(2), MIN),
    ];
    "anthropic requests only, no date: local clock": [
        ("anthropic-ratelimit-requests-limit", b"50"),
        ("anthropic-ratelimit-requests-remaining", b"0"),
        ("anthropic-ratelimit-requests-reset", b"2026-11-23T09:14:30Z"),
    ] => A, [(Req, Some(50), Some(0), S(30), MIN)];
    "anthropic skew: server clock 10 s ahead of ours": [
        ("date", b"Mon, 23 Nov 2026 09:14:10 GMT"),
        ("anthropic-ratelimit-requests-reset", b"2026-11-23T09:14:15Z"),
    ] => A, [(Req, None, None, S(5), MIN)];
    "anthropic fractional reset with offset": [
        ("date", b"Mon, 23 Nov 2026 09:14:00 GMT"),
        ("anthropic-ratelimit-tokens-reset", b"2026-11-23T10:14:00.250+01:00"),
    ] => A, [(Tok, None, None, MS(250), MIN)];
    "anthropic reset in the past reads zero": [
        ("date", b"Mon, 23 Nov 2026 09:14:00 GMT"),
        ("anthropic-ratelimit-requests-reset", b"2026-11-23T09:00:00Z"),
    ] => A, [(Req, None, None, S(0), MIN)];
    "anthropic reset far away is clamped": [
        ("date", b"Mon, 23 Nov 2026 09:14:00 GMT"),
        ("anthropic-ratelimit-requests-reset", b"2099-01-01T00:00:00Z"),
    ] => A, [(Req, None, None, Some(MAX_HINT), MIN)];
    "anthropic malformed reset ignored, numbers kept": [
        ("anthropic-ratelimit-requests-limit", b"50"),
        ("anthropic-ratelimit-requests-remaining", b"12"),
        ("anthropic-ratelimit-requests-reset", b"soon"),
    ] => A, [(Req, Some(50), Some(12), None, MIN)];
    "anthropic negative limit ignored": [
        ("anthropic-ratelimit-requests-limit", b"-5"),
        ("anthropic-ratelimit-requests-remaining", b"3"),
    ] => A, [(Req, None, Some(3), None, MIN)];
    "anthropic float remaining ignored": [
        ("anthropic-ratelimit-input-tokens-remaining", b"12.5"),
        ("anthropic-ratelimit-input-tokens-limit", b"100"),
    ] => A, [(In, Some(100), None, None, MIN)];
    "anthropic all malformed: nothing": [
        ("anthropic-ratelimit-requests-limit", b"lots"),
        ("anthropic-ratelimit-requests-remaining", b""),
        ("anthropic-ratelimit-requests-reset", b"2026-13-45T99:99:99Z"),
    ] => None, [];
    "anthropic non-utf8 value ignored": [
        ("anthropic-ratelimit-requests-limit", b"\xff\xfe"),
        ("anthropic-ratelimit-requests-remaining", b"7"),
    ] => A, [(Req, None, Some(7), None, MIN)];
    "anthropic whitespace tolerated": [
        ("anthropic-ratelimit-requests-limit", b"  50 "),
    ] => A, [(Req, Some(50), None, None, MIN)];
    "anthropic unknown dimension ignored": [
        ("anthropic-ratelimit-unified-status", b"allowed"),
        ("anthropic-ratelimit-images-limit", b"5"),
    ] => None, [];
    "anthropic reset as delay-seconds (proxy)": [
        ("anthropic-ratelimit-requests-reset", b"12"),
    ] => A, [(Req, None, None, S(12), MIN)];
    "anthropic no date, reset 61 s ahead: within the tolerance": [
        ("anthropic-ratelimit-requests-limit", b"50"),
        ("anthropic-ratelimit-requests-reset", b"2026-11-23T09:15:01Z"),
    ] => A, [(Req, Some(50), None, S(61), MIN)];
    "anthropic no date, reset 1 s past: within the tolerance, zero": [
        ("anthropic-ratelimit-requests-reset", b"2026-11-23T09:13:59Z"),
    ] => A, [(Req, None, None, S(0), MIN)];
    "anthropic no date, reset 10 min ahead of our clock: skew, reset dropped": [
        ("anthropic-ratelimit-input-tokens-limit", b"30000"),
        ("anthropic-ratelimit-input-tokens-remaining", b"0"),
        ("anthropic-ratelimit-input-tokens-reset", b"2026-11-23T09:24:00Z"),
    ] => A, [(In, Some(30000), Some(0), None, MIN)];
    "anthropic no date, reset 3 s past: skew, reset dropped": [
        ("anthropic-ratelimit-input-tokens-limit", b"30000"),
        ("anthropic-ratelimit-input-tokens-remaining", b"12000"),
        ("anthropic-ratelimit-input-tokens-reset", b"2026-11-23T09:13:57Z"),
    ] => A, [(In, Some(30000), Some(12000), None, MIN)];
    "anthropic with a date, reset 10 min ahead: the server's clock, kept": [
        ("date", b"Mon, 23 Nov 2026 09:14:00 GMT"),
        ("anthropic-ratelimit-input-tokens-reset", b"2026-11-23T09:24:00Z"),
    ] => A, [(In, None, None, S(600), MIN)];
    "anthropic unreadable date falls back to local clock": [
        ("date", b"yesterday-ish"),
        ("anthropic-ratelimit-requests-reset", b"2026-11-23T09:14:03Z"),
    ] => A, [(Req, None, None, S(3), MIN)];
    "anthropic priority tier only": [
        ("date", b"Mon, 23 Nov 2026 09:14:00 GMT"),
        ("anthropic-priority-input-tokens-limit", b"100000"),
        ("anthropic-priority-input-tokens-remaining", b"99000"),
        ("anthropic-priority-input-tokens-reset", b"2026-11-23T09:14:01Z"),
    ] => A, [];
    "anthropic first line of a repeated header wins": [
        ("anthropic-ratelimit-requests-limit", b"50"),
        ("anthropic-ratelimit-requests-limit", b"60"),
    ] => A, [(Req, Some(50), None, None, MIN)];
    "anthropic overflowing integer ignored": [
        ("anthropic-ratelimit-requests-limit", b"99999999999999999999999"),
        ("anthropic-ratelimit-requests-remaining", b"1"),
    ] => A, [(Req, None, Some(1), None, MIN)];

    // ---- OpenAI ----
    "openai full set": [
        ("x-ratelimit-limit-requests", b"10000"),
        ("x-ratelimit-limit-tokens", b"2000000"),
        ("x-ratelimit-remaining-requests", b"9999"),
        ("x-ratelimit-remaining-tokens", b"1999000"),
        ("x-ratelimit-reset-requests", b"6ms"),
        ("x-ratelimit-reset-tokens", b"30ms"),
    ] => O, [
        (Req, Some(10000), Some(9999), MS(6), MIN),
        (Tok, Some(2000000), Some(1999000), MS(30), MIN),
    ];
    "openai minutes and seconds": [
        ("x-ratelimit-reset-requests", b"6m0s"),
    ] => O, [(Req, None, None, S(360), MIN)];
    "openai reference 1s and 12ms": [
        ("x-ratelimit-reset-requests", b"1s"),
        ("x-ratelimit-reset-tokens", b"12ms"),
    ] => O, [(Req, None, None, S(1), MIN), (Tok, None, None, MS(12), MIN)];
    "openai hours": [
        ("x-ratelimit-reset-tokens", b"1h30m"),
    ] => O, [(Tok, None, None, S(5400), MIN)];
    "openai fractional seconds": [
        ("x-ratelimit-reset-tokens", b"0.5s"),
    ] => O, [(Tok, None, None, MS(500), MIN)];
    "openai minutes and fractional seconds": [
        ("x-ratelimit-reset-requests", b"2m59.56s"),
    ] => O, [(Req, None, None, MS(179_560), MIN)];
    "openai microseconds (micro sign)": [
        ("x-ratelimit-reset-requests", b"1500\xc2\xb5s"),
    ] => O, [(Req, None, None, US(1500), MIN)];
    "openai microseconds (us)": [
        ("x-ratelimit-reset-requests", b"2000us"),
    ] => O, [(Req, None, None, MS(2), MIN)];
    "openai nanoseconds": [
        ("x-ratelimit-reset-requests", b"3000000ns"),
    ] => O, [(Req, None, None, MS(3), MIN)];
    "openai -1 means unknown": [
        ("x-ratelimit-limit-requests", b"500"),
        ("x-ratelimit-reset-requests", b"-1"),
    ] => O, [(Req, Some(500), None, None, MIN)];
    "openai 0 means unknown": [
        ("x-ratelimit-remaining-tokens", b"10"),
        ("x-ratelimit-reset-tokens", b"0"),
    ] => O, [(Tok, None, Some(10), None, MIN)];
    "openai 0s is a real zero": [
        ("x-ratelimit-reset-tokens", b"0s"),
    ] => O, [(Tok, None, None, S(0), MIN)];
    "openai bare seconds accepted": [
        ("x-ratelimit-reset-requests", b"20"),
    ] => O, [(Req, None, None, S(20), MIN)];
    "openai garbage unit ignored": [
        ("x-ratelimit-limit-requests", b"60"),
        ("x-ratelimit-reset-requests", b"6 minutes"),
    ] => O, [(Req, Some(60), None, None, MIN)];
    "openai huge duration clamped": [
        ("x-ratelimit-reset-requests", b"100000h"),
    ] => O, [(Req, None, None, Some(MAX_HINT), MIN)];
    "openai exponent rejected": [
        ("x-ratelimit-reset-requests", b"1e9s"),
        ("x-ratelimit-limit-requests", b"1"),
    ] => O, [(Req, Some(1), None, None, MIN)];
    "openai unknown suffix ignored": [
        ("x-ratelimit-limit-images", b"5"),
    ] => None, [];
    "openai nan rejected": [
        ("x-ratelimit-reset-tokens", b"NaNs"),
    ] => None, [];

    // ---- IETF structured (draft -10) ----
    "ietf structured policy and limit joined by name": [
        ("ratelimit-policy", b"\"default\";q=100;w=60"),
        ("ratelimit", b"\"default\";r=50;t=30"),
    ] => IS, [(Req, Some(100), Some(50), S(30), MIN)];
    "ietf structured reference example: most restrictive": [
        ("ratelimit-policy", b"\"burst\";q=100;w=60,\"daily\";q=1000;w=86400"),
        ("ratelimit", b"\"burst\";r=10;t=20, \"daily\";r=900;t=80000"),
    ] => IS, [(Req, Some(100), Some(10), S(20), MIN)];
    "ietf structured daily exhausted wins over burst": [
        ("ratelimit-policy", b"\"burst\";q=100;w=60,\"daily\";q=1000;w=86400"),
        ("ratelimit", b"\"burst\";r=90;t=20, \"daily\";r=0;t=3600"),
    ] => IS, [(Req, Some(1000), Some(0), S(3600), Some(Duration::from_secs(86400)))];
    "ietf structured tie on remaining: later reset wins": [
        ("ratelimit", b"\"a\";r=5;t=10, \"b\";r=5;t=50"),
    ] => IS, [(Req, None, Some(5), S(50), None)];
    "ietf structured limit without policy": [
        ("ratelimit", b"\"default\";r=3;t=7"),
    ] => IS, [(Req, None, Some(3), S(7), None)];
    "ietf structured token unit": [
        ("ratelimit-policy", b"\"tpm\";q=40000;w=60;qu=\"tokens\", \"rpm\";q=60;w=60"),
        ("ratelimit", b"\"tpm\";r=12000;t=12, \"rpm\";r=59;t=1"),
    ] => IS, [
        (Req, Some(60), Some(59), S(1), MIN),
        (Tok, Some(40000), Some(12000), S(12), MIN),
    ];
    "ietf structured input and output token units": [
        ("ratelimit-policy", b"\"in\";q=100;w=60;qu=\"input-tokens\", \"out\";q=10;w=60;qu=output_tokens"),
        ("ratelimit", b"\"in\";r=1;t=2, \"out\";r=3;t=4"),
    ] => IS, [
        (In, Some(100), Some(1), S(2), MIN),
        (Out, Some(10), Some(3), S(4), MIN),
    ];
    "ietf structured unmappable unit ignored": [
        ("ratelimit-policy", b"\"bytes\";q=1000;w=1;qu=\"content-bytes\""),
        ("ratelimit", b"\"bytes\";r=5;t=1"),
    ] => None, [];
    "ietf structured policy alone gives quota and window": [
        ("ratelimit-policy", b"\"hourly\";q=500;w=3600"),
    ] => IS, [(Req, Some(500), None, None, Some(Duration::from_secs(3600)))];
    "ietf structured token names": [
        ("ratelimit-policy", b"default;q=10;w=1"),
        ("ratelimit", b"default;r=9;t=1"),
    ] => IS, [(Req, Some(10), Some(9), S(1), Some(Duration::from_secs(1)))];
    "ietf structured multiple lines": [
        ("ratelimit-policy", b"\"a\";q=10;w=1"),
        ("ratelimit-policy", b"\"b\";q=100;w=60"),
        ("ratelimit", b"\"a\";r=4;t=1"),
        ("ratelimit", b"\"b\";r=3;t=30"),
    ] => IS, [(Req, Some(100), Some(3), S(30), MIN)];
    "ietf structured malformed line ignored": [
        ("ratelimit", b"\"a\";r=4;t=1,,"),
    ] => None, [];
    "ietf structured wrong parameter type drops the item": [
        ("ratelimit", b"\"a\";r=\"four\";t=1, \"b\";r=8;t=2"),
    ] => IS, [(Req, None, Some(8), S(2), None)];
    "ietf structured negative remaining drops the item": [
        ("ratelimit", b"\"a\";r=-4;t=1"),
    ] => None, [];
    "ietf structured inner list ignored": [
        ("ratelimit", b"(\"a\" \"b\");r=1, \"c\";r=2;t=3"),
    ] => IS, [(Req, None, Some(2), S(3), None)];
    "ietf structured huge t clamped": [
        ("ratelimit", b"\"a\";r=0;t=999999999999999"),
    ] => IS, [(Req, None, Some(0), Some(MAX_HINT), None)];
    "ietf structured garbage": [
        ("ratelimit", b"garbage ;;; \xff"),
        ("ratelimit-policy", b"=q"),
    ] => None, [];

    "ietf structured reference policy: q, w, qu, pk": [
        ("ratelimit-policy", b"\"burst\";q=100;w=60;pk=:cHsdsRa894==:"),
        ("ratelimit", b"\"burst\";r=50;t=30;pk=:cHsdsRa894==:"),
    ] => IS, [(Req, Some(100), Some(50), S(30), MIN)];

    // ---- IETF legacy (<= draft -06) ----
    "ietf legacy triple": [
        ("ratelimit-limit", b"10"),
        ("ratelimit-remaining", b"1"),
        ("ratelimit-reset", b"7"),
    ] => IL, [(Req, Some(10), Some(1), S(7), None)];
    "ietf legacy with policy window": [
        ("ratelimit-limit", b"10"),
        ("ratelimit-remaining", b"9"),
        ("ratelimit-reset", b"1"),
        ("ratelimit-policy", b"10;w=1, 50;w=60"),
    ] => IL, [(Req, Some(10), Some(9), S(1), Some(Duration::from_secs(1)))];
    "ietf legacy limit carrying its policies": [
        ("ratelimit-limit", b"50, 10;w=1, 50;w=60"),
        ("ratelimit-remaining", b"20"),
    ] => IL, [(Req, Some(50), Some(20), None, MIN)];
    "ietf legacy epoch reset": [
        ("ratelimit-remaining", b"0"),
        ("ratelimit-reset", b"1795425300"),
    ] => IL, [(Req, None, Some(0), S(60), None)];
    "ietf legacy malformed reset": [
        ("ratelimit-limit", b"10"),
        ("ratelimit-reset", b"later"),
    ] => IL, [(Req, Some(10), None, None, None)];
    "ietf legacy negative remaining": [
        ("ratelimit-remaining", b"-1"),
    ] => None, [];
    "ietf structured beats legacy": [
        ("ratelimit-limit", b"10"),
        ("ratelimit-remaining", b"1"),
        ("ratelimit", b"\"x\";r=2;t=3"),
    ] => IS, [(Req, None, Some(2), S(3), None)];

    // ---- GitHub-style ----
    "github epoch reset": [
        ("x-ratelimit-limit", b"5000"),
        ("x-ratelimit-remaining", b"4999"),
        ("x-ratelimit-reset", b"1795428840"),
        ("x-ratelimit-used", b"1"),
        ("x-ratelimit-resource", b"core"),
    ] => GH, [(Req, Some(5000), Some(4999), S(3600), None)];
    "github epoch against the date header": [
        ("date", b"Mon, 23 Nov 2026 09:15:00 GMT"),
        ("x-ratelimit-reset", b"1795425330"),
    ] => GH, [(Req, None, None, S(30), None)];
    "github epoch in the past": [
        ("x-ratelimit-remaining", b"0"),
        ("x-ratelimit-reset", b"1700000000"),
    ] => GH, [(Req, None, Some(0), S(0), None)];
    "github-style names with relative seconds": [
        ("x-ratelimit-limit", b"100"),
        ("x-ratelimit-reset", b"42"),
    ] => GH, [(Req, Some(100), None, S(42), None)];
    "github-style names with a Go duration": [
        ("x-ratelimit-reset", b"1m30s"),
    ] => GH, [(Req, None, None, S(90), None)];
    "github-style names with a float": [
        ("x-ratelimit-reset", b"1.5"),
    ] => GH, [(Req, None, None, MS(1500), None)];
    "github used and resource do not disturb": [
        ("x-ratelimit-remaining", b"0"),
        ("x-ratelimit-used", b"60"),
        ("x-ratelimit-resource", b"search"),
    ] => GH, [(Req, None, Some(0), None, None)];
    "github malformed": [
        ("x-ratelimit-limit", b"many"),
        ("x-ratelimit-reset", b"tomorrow"),
    ] => None, [];
    "github epoch far future clamped": [
        ("x-ratelimit-reset", b"4000000000"),
    ] => GH, [(Req, None, None, Some(MAX_HINT), None)];

    // ---- precedence ----
    "anthropic beats openai per dimension": [
        ("anthropic-ratelimit-requests-limit", b"50"),
        ("x-ratelimit-limit-requests", b"500"),
        ("x-ratelimit-limit-tokens", b"9000"),
    ] => A, [(Req, Some(50), None, None, MIN), (Tok, Some(9000), None, None, MIN)];
    "openai beats github": [
        ("x-ratelimit-limit-requests", b"500"),
        ("x-ratelimit-limit", b"5000"),
    ] => O, [(Req, Some(500), None, None, MIN)];
    "legacy beats github": [
        ("ratelimit-limit", b"10"),
        ("x-ratelimit-limit", b"5000"),
    ] => IL, [(Req, Some(10), None, None, None)];
    "openai beats structured ietf, ietf fills tokens": [
        ("x-ratelimit-limit-requests", b"500"),
        ("ratelimit-policy", b"\"t\";q=1000;w=60;qu=\"tokens\", \"r\";q=5;w=1"),
        ("ratelimit", b"\"t\";r=10;t=6, \"r\";r=1;t=1"),
    ] => O, [(Req, Some(500), None, None, MIN), (Tok, Some(1000), Some(10), S(6), MIN)];
    "no rate-limit headers": [
        ("content-type", b"application/json"),
        ("date", b"Mon, 23 Nov 2026 09:14:00 GMT"),
    ] => None, [];
    "empty header map": [] => None, [];
};

#[test]
fn dialect_table() {
    assert!(CASES.len() >= 60, "{} cases", CASES.len());
    for case in CASES {
        check(case);
    }
}

#[test]
fn anthropic_priority_tier() {
    let headers = map(&[
        ("date", DATE.as_bytes()),
        ("anthropic-priority-input-tokens-limit", b"100000"),
        ("anthropic-priority-input-tokens-remaining", b"99000"),
        (
            "anthropic-priority-input-tokens-reset",
            b"2026-11-23T09:14:01Z",
        ),
        ("anthropic-priority-output-tokens-limit", b"20000"),
        ("anthropic-ratelimit-requests-limit", b"4000"),
    ]);
    let s = RateLimitSnapshot::from_headers_at(&headers, now());
    assert_eq!(
        s.priority_input_tokens(),
        Some(
            &BucketReading::new(Some(100000), Some(99000), S(1))
                .with_window(Duration::from_secs(60))
        )
    );
    assert_eq!(
        s.priority_output_tokens(),
        Some(&BucketReading::new(Some(20000), None, None).with_window(Duration::from_secs(60)))
    );
    assert_eq!(s.get(Dimension::Requests).unwrap().limit(), Some(4000));
    assert!(!s.is_empty());
}

struct HintCase {
    name: &'static str,
    headers: &'static [(&'static str, &'static [u8])],
    wait: Option<(Duration, WaitSource)>,
    should_retry: Option<bool>,
}

macro_rules! hints {
    ($($name:literal: [$(($h:literal, $v:literal)),* $(,)?] => $wait:expr, $retry:expr;)*) => {
        &[$(HintCase { name: $name, headers: &[$(($h, $v)),*], wait: $wait, should_retry: $retry }),*]
    };
}

const SEC: WaitSource = WaitSource::RetryAfterSeconds;
const MSS: WaitSource = WaitSource::RetryAfterMs;
const DAT: WaitSource = WaitSource::RetryAfterDate;

const fn secs(s: u64, src: WaitSource) -> Option<(Duration, WaitSource)> {
    Some((Duration::from_secs(s), src))
}

const fn millis(ms: u64, src: WaitSource) -> Option<(Duration, WaitSource)> {
    Some((Duration::from_millis(ms), src))
}

static HINTS: &[HintCase] = hints! {
    "integer seconds": [("retry-after", b"7")] => secs(7, SEC), None;
    "float seconds": [("retry-after", b"1.5")] => millis(1500, SEC), None;
    "zero": [("retry-after", b"0")] => secs(0, SEC), None;
    "retry-after-ms wins": [("retry-after", b"2"), ("retry-after-ms", b"1234.5")]
        => Some((Duration::from_micros(1_234_500), MSS)), None;
    "bad retry-after-ms falls back": [("retry-after", b"2"), ("retry-after-ms", b"soon")]
        => secs(2, SEC), None;
    "imf-fixdate": [("date", b"Mon, 23 Nov 2026 09:14:00 GMT"), ("retry-after", b"Mon, 23 Nov 2026 09:14:30 GMT")]
        => secs(30, DAT), None;
    "rfc 850": [("retry-after", b"Monday, 23-Nov-26 09:15:00 GMT")] => secs(60, DAT), None;
    "asctime": [("retry-after", b"Mon Nov 23 09:14:05 2026")] => secs(5, DAT), None;
    "numeric zone": [("retry-after", b"Mon, 23 Nov 2026 09:14:09 +0000")] => secs(9, DAT), None;
    "date in the past": [("retry-after", b"Sun, 06 Nov 1994 08:49:37 GMT")] => secs(0, DAT), None;
    "date skew cancelled by date header": [("date", b"Mon, 23 Nov 2026 10:00:00 GMT"), ("retry-after", b"Mon, 23 Nov 2026 10:00:20 GMT")]
        => secs(20, DAT), None;
    "negative": [("retry-after", b"-5")] => None, None;
    "nan": [("retry-after", b"NaN")] => None, None;
    "inf": [("retry-after", b"inf")] => None, None;
    "negative ms": [("retry-after-ms", b"-100")] => None, None;
    "huge seconds clamped": [("retry-after", b"99999999999999999999")] => Some((MAX_RETRY_AFTER, SEC)), None;
    "huge ms clamped": [("retry-after-ms", b"1e308")] => None, None;
    "huge digits ms clamped": [("retry-after-ms", b"999999999999999999999999")] => Some((MAX_RETRY_AFTER, MSS)), None;
    "garbage": [("retry-after", b"later please")] => None, None;
    "should retry true": [("x-should-retry", b"true")] => None, Some(true);
    "should retry false": [("x-should-retry", b"FALSE")] => None, Some(false);
    "should retry garbage": [("x-should-retry", b"maybe")] => None, None;
    "all": [("x-should-retry", b"true"), ("retry-after", b"3")] => secs(3, SEC), Some(true);
    "retry-after-ms fractional": [("retry-after-ms", b"1.5")] => Some((Duration::from_micros(1500), MSS)), None;
    "retry-after-ms alone": [("retry-after-ms", b"250")] => millis(250, MSS), None;
    "retry-after-ms beats an http-date": [("retry-after", b"Mon, 23 Nov 2026 09:15:00 GMT"), ("retry-after-ms", b"100")]
        => millis(100, MSS), None;
    "whitespace around delay-seconds": [("retry-after", b" 7 ")] => secs(7, SEC), None;
    "imf-fixdate without a date header: local clock": [("retry-after", b"Mon, 23 Nov 2026 09:14:45 GMT")]
        => secs(45, DAT), None;
    "retry-after beats the ietf t parameter": [("ratelimit", b"\"a\";r=0;t=30"), ("retry-after", b"5")]
        => secs(5, SEC), None;
    "should retry true alone carries no wait": [("x-should-retry", b"true"), ("retry-after", b"soon")] => None, Some(true);
    "none": [] => None, None;
};

#[test]
fn retry_hint_table() {
    for case in HINTS {
        let h = RetryHints::from_headers_at(&map(case.headers), now());
        assert_eq!(
            h.retry_after().zip(h.source()),
            case.wait,
            "{}: wait",
            case.name
        );
        assert_eq!(h.should_retry(), case.should_retry, "{}", case.name);
    }
}

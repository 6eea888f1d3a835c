//! Property ("fuzz") tests of every parser of untrusted input: the rate-limit header parser, the
//! retry-hint parser, the error-body parser and the default classifier.
//!
//! `cargo-fuzz` is not available with the toolchain here, so these are proptest runs with large
//! case counts, starting from a seed corpus of real header sets (Anthropic, OpenAI, IETF
//! `RateLimit`, GitHub, AWS Bedrock) and mutating them with hostile values: arbitrary bytes
//! (invalid UTF-8 included), huge and negative numbers, `NaN`/`inf`, broken dates and durations.
//!
//! The last properties send extreme numbers (0, 1, the integer limits, negatives, NaN,
//! infinities, in each field's shape) in every numeric header through whole stacks, with
//! overflow checks on, so an arithmetic overflow anywhere a server's number meets ours panics.
//!
//! Each property runs `PROPTEST_CASES` cases (default 2 000, a quarter of that for the stack
//! properties; 100 000 for the long run); see RELIABILITY.md.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use tower_llm_limits::signals::{
    ApiError, Classify, DefaultClassifier, Dimension, MAX_HINT, MAX_RETRY_AFTER, RateLimitSnapshot,
    RetryHints,
};

/// Cases per property: `PROPTEST_CASES`, else 2 000.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

/// Every header name a parser of this crate reads (or could plausibly read).
const KNOWN_HEADERS: &[&str] = &[
    "date",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-limit",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-limit",
    "anthropic-ratelimit-output-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset",
    "anthropic-priority-input-tokens-limit",
    "anthropic-priority-input-tokens-remaining",
    "anthropic-priority-input-tokens-reset",
    "anthropic-priority-output-tokens-limit",
    "anthropic-priority-output-tokens-remaining",
    "anthropic-priority-output-tokens-reset",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-used",
    "x-ratelimit-resource",
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-amzn-errortype",
    "x-amzn-requestid",
    "x-amzn-bedrock-input-token-count",
    "x-amzn-bedrock-output-token-count",
    "request-id",
    "x-request-id",
];

/// Real header sets, as the providers send them.
fn corpus() -> Vec<Vec<(&'static str, &'static str)>> {
    vec![
        // Anthropic Messages API.
        vec![
            ("date", "Mon, 23 Nov 2026 11:00:00 GMT"),
            ("anthropic-ratelimit-requests-limit", "4000"),
            ("anthropic-ratelimit-requests-remaining", "3999"),
            ("anthropic-ratelimit-requests-reset", "2026-11-23T11:00:01Z"),
            ("anthropic-ratelimit-tokens-limit", "2400000"),
            ("anthropic-ratelimit-tokens-remaining", "2398000"),
            ("anthropic-ratelimit-tokens-reset", "2026-11-23T11:00:02Z"),
            ("anthropic-ratelimit-input-tokens-limit", "2000000"),
            ("anthropic-ratelimit-input-tokens-remaining", "1999000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2026-11-23T11:00:01Z",
            ),
            ("anthropic-ratelimit-output-tokens-limit", "400000"),
            ("anthropic-ratelimit-output-tokens-remaining", "399000"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2026-11-23T11:00:02.5Z",
            ),
            ("request-id", "req_011CSHoEeqs5C35K2UUqR7Fy"),
        ],
        // Anthropic 429.
        vec![
            ("date", "Mon, 23 Nov 2026 11:00:00 GMT"),
            ("retry-after", "17"),
            ("x-should-retry", "true"),
            ("anthropic-ratelimit-input-tokens-limit", "30000"),
            ("anthropic-ratelimit-input-tokens-remaining", "0"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2026-11-23T11:00:17Z",
            ),
        ],
        // OpenAI.
        vec![
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-remaining-requests", "9999"),
            ("x-ratelimit-reset-requests", "6ms"),
            ("x-ratelimit-limit-tokens", "30000000"),
            ("x-ratelimit-remaining-tokens", "29999000"),
            ("x-ratelimit-reset-tokens", "1m2.345s"),
            ("retry-after-ms", "1500"),
            ("x-request-id", "req_abc123"),
        ],
        // IETF RateLimit (draft-ietf-httpapi-ratelimit-headers, structured fields).
        vec![
            ("ratelimit-policy", "\"default\";q=100;w=60"),
            ("ratelimit", "\"default\";r=42;t=30"),
        ],
        // IETF, the older three-header draft.
        vec![
            ("ratelimit-limit", "100"),
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", "50"),
            ("retry-after", "Mon, 23 Nov 2026 11:00:50 GMT"),
        ],
        // GitHub.
        vec![
            ("date", "Mon, 23 Nov 2026 11:00:00 GMT"),
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "4987"),
            ("x-ratelimit-used", "13"),
            ("x-ratelimit-reset", "1795431600"),
            ("x-ratelimit-resource", "core"),
        ],
        // AWS Bedrock throttling.
        vec![
            (
                "x-amzn-errortype",
                "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            ),
            ("x-amzn-requestid", "5d2f6f3e-8c0a-4c1e-9f7a-1b2c3d4e5f60"),
            ("retry-after", "3"),
        ],
        vec![
            ("x-amzn-bedrock-input-token-count", "1200"),
            ("x-amzn-bedrock-output-token-count", "350"),
        ],
    ]
}

/// Hostile values that look like what a parser expects.
const HOSTILE: &[&str] = &[
    "",
    " ",
    "-1",
    "-0",
    "0",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "1e308",
    "1e999",
    "-1e308",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999999999999",
    "9223372036854775807",
    "-9223372036854775808",
    "0.0000000001",
    "1.5",
    "1,5",
    "0x10",
    "+5",
    "5 ",
    "١٢",
    "9999-12-31T23:59:59Z",
    "0000-01-01T00:00:00Z",
    "2026-13-45T25:61:61Z",
    "2026-11-23T11:00:00+99:99",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "Thu, 01 Jan 1970 00:00:00 GMT",
    "Mon, 32 Foo 2026 99:99:99 GMT",
    "1h2m3s",
    "999999999h",
    "1.5.5s",
    "-5s",
    "ms",
    "9999999999999999999ms",
    "1e10s",
    "\"p\";q=-1;w=0",
    "\"p\";r=1e9;t=-5",
    "\"p\";q=99999999999999999999;w=99999999999999999999",
    "a;b;c=\"",
    "\"default\";q=0;w=0",
    "true",
    "false",
    "TRUE",
];

fn hostile_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        prop::sample::select(HOSTILE)
            .prop_map(|v| HeaderValue::from_bytes(v.as_bytes()).expect("no control bytes")),
        // Arbitrary bytes, invalid UTF-8 included (HeaderValue refuses only control bytes).
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|bytes| {
            let bytes: Vec<u8> = bytes
                .into_iter()
                .filter(|b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f))
                .collect();
            HeaderValue::from_bytes(&bytes).expect("visible bytes are a valid header value")
        }),
        any::<i128>().prop_map(|n| HeaderValue::from_str(&n.to_string()).unwrap()),
        any::<f64>().prop_map(|n| HeaderValue::from_str(&n.to_string()).unwrap()),
        (
            any::<u64>(),
            prop::sample::select(&["ms", "s", "m", "h", "us", "ns", ""][..])
        )
            .prop_map(|(n, unit)| HeaderValue::from_str(&format!("{n}{unit}")).unwrap()),
        (any::<i64>(), any::<i64>()).prop_map(|(q, w)| {
            HeaderValue::from_str(&format!("\"p\";q={q};w={w};r={q};t={w}")).unwrap()
        }),
        // The shapes the parsers branch on: Go durations with fractions, RFC 3339 times with
        // fractions and offsets, structured-field items with a quota unit.
        "[0-9]{1,30}(\\.[0-9]{0,10})?(ns|us|ms|s|m|h)?".prop_map(shaped),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})".prop_map(shaped),
        "\"[a-z]{1,5}\";(q|r|t|w)=-?[0-9]{1,18}(;qu=\"?[a-z-]{1,13}\"?)?".prop_map(shaped),
    ]
}

/// A value made by one of the regular expressions above (printable ASCII by construction).
fn shaped(value: String) -> HeaderValue {
    HeaderValue::from_str(&value).expect("printable ASCII")
}

fn header_name() -> impl Strategy<Value = HeaderName> {
    prop::sample::select(KNOWN_HEADERS).prop_map(HeaderName::from_static)
}

/// Arbitrary header maps over the known names.
fn arbitrary_headers() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((header_name(), hostile_value()), 0..24).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name, value);
        }
        map
    })
}

/// A corpus header set with some values replaced by hostile ones, some removed, some repeated.
fn mutated_corpus() -> impl Strategy<Value = HeaderMap> {
    let sets = corpus();
    (
        0..sets.len(),
        prop::collection::vec(
            (any::<prop::sample::Index>(), 0u8..4, hostile_value()),
            0..6,
        ),
    )
        .prop_map(move |(i, edits)| {
            let set = &sets[i];
            let mut pairs: Vec<(HeaderName, HeaderValue)> = set
                .iter()
                .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
                .collect();
            for (index, op, value) in edits {
                if pairs.is_empty() {
                    break;
                }
                let at = index.index(pairs.len());
                match op {
                    0 => pairs[at].1 = value,
                    1 => {
                        pairs.remove(at);
                    }
                    2 => {
                        let name = pairs[at].0.clone();
                        pairs.push((name, value));
                    }
                    _ => pairs.push((HeaderName::from_static("date"), value)),
                }
            }
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(name, value);
            }
            map
        })
}

fn any_headers() -> impl Strategy<Value = HeaderMap> {
    prop_oneof![mutated_corpus(), arbitrary_headers()]
}

/// Wall-clock times from before the epoch's start to far in the future.
fn wall_clock() -> impl Strategy<Value = SystemTime> {
    prop_oneof![
        Just(SystemTime::UNIX_EPOCH),
        (0u64..4_102_444_800).prop_map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
        Just(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_431_600)),
    ]
}

fn check_snapshot(snapshot: &RateLimitSnapshot) -> Result<(), TestCaseError> {
    for dimension in Dimension::ALL {
        if let Some(reading) = snapshot.get(dimension) {
            if let Some(reset) = reading.reset() {
                prop_assert!(reset <= MAX_HINT, "{dimension:?} reset {reset:?}");
            }
            if let Some(window) = reading.window() {
                prop_assert!(window <= MAX_HINT, "{dimension:?} window {window:?}");
            }
        }
    }
    for reading in [
        snapshot.priority_input_tokens(),
        snapshot.priority_output_tokens(),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(reset) = reading.reset() {
            prop_assert!(reset <= MAX_HINT, "priority reset {reset:?}");
        }
        if let Some(window) = reading.window() {
            prop_assert!(window <= MAX_HINT, "priority window {window:?}");
        }
    }
    let _ = format!("{snapshot:?}");
    Ok(())
}

fn check_hints(hints: &RetryHints) -> Result<(), TestCaseError> {
    if let Some(wait) = hints.retry_after() {
        prop_assert!(wait <= MAX_RETRY_AFTER, "retry-after {wait:?}");
    }
    // A wait has a source, and a source gives a wait.
    prop_assert_eq!(hints.retry_after().is_some(), hints.source().is_some());
    let _ = format!("{hints:?}");
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// `RateLimitSnapshot::from_headers_at` never panics and never returns a reset beyond
    /// `MAX_HINT`.
    #[test]
    fn rate_limit_headers_never_panic(headers in any_headers(), now in wall_clock()) {
        check_snapshot(&RateLimitSnapshot::from_headers_at(&headers, now))?;
    }

    /// `RetryHints::from_headers_at` never panics and never returns a wait beyond
    /// `MAX_RETRY_AFTER`.
    #[test]
    fn retry_hints_never_panic(headers in any_headers(), now in wall_clock()) {
        check_hints(&RetryHints::from_headers_at(&headers, now))?;
    }

    /// The default classifier accepts every status from 100 to 999 and any headers; its wait is
    /// bounded like the hints it reads.
    #[test]
    fn classifier_never_panics(
        status in 100u16..=999,
        headers in any_headers(),
        now in wall_clock(),
        body in error_body(),
    ) {
        let status = StatusCode::from_u16(status).expect("100..=999 is a valid status");
        let hints = RetryHints::from_headers_at(&headers, now);
        let api_error = ApiError::from_json(&body);
        let outcome = DefaultClassifier::new().classify_response(
            status,
            &headers,
            &hints,
            api_error.as_ref(),
        );
        if let Some(wait) = outcome.retry_after() {
            prop_assert!(wait <= MAX_RETRY_AFTER);
        }
        // Success implies a status below 400.
        prop_assert!(
            !outcome.is_success() || status.as_u16() < 400,
            "{status} read as a success"
        );
        let _ = format!("{outcome:?} {}", outcome.kind().as_str());
    }

    /// `ApiError::from_json` never panics on arbitrary bytes or mutated error bodies.
    #[test]
    fn error_body_never_panics(body in error_body()) {
        if let Some(error) = ApiError::from_json(&body) {
            let _ = (error.kind(), error.message(), error.code(), error.request_id());
            let _ = format!("{error:?}");
        }
    }
}

/// Real error bodies, then JSON-shaped mutations of them, then arbitrary bytes.
fn error_body() -> impl Strategy<Value = Vec<u8>> {
    const BODIES: &[&str] = &[
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"spend","details":{"error_code":"enforced_spend_limit_reached"}}}"#,
        r#"{"error":{"message":"Rate limit reached for gpt-4o","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        r#"{"message":"Too many requests, please wait before trying again."}"#,
        r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
        r#"{"message":"API rate limit exceeded for 1.2.3.4.","documentation_url":"https://docs.github.com/rest"}"#,
    ];
    const NOISE: &[&str] = &[
        "null",
        "true",
        "1e999",
        "-0",
        "\"\\ud800\"",
        "[]",
        "{}",
        "[[[[[[[[[[",
        "\"\u{0}\"",
        "{\"type\":{\"type\":{}}}",
        "12345678901234567890123",
        "\"",
        "}",
        ",",
    ];
    prop_oneof![
        prop::sample::select(BODIES).prop_map(|b| b.as_bytes().to_vec()),
        (
            prop::sample::select(BODIES),
            prop::collection::vec(
                (
                    any::<prop::sample::Index>(),
                    prop::sample::select(NOISE),
                    any::<bool>()
                ),
                1..5
            ),
        )
            .prop_map(|(body, edits)| {
                let mut s = body.as_bytes().to_vec();
                for (index, noise, replace) in edits {
                    let at = index.index(s.len() + 1);
                    if replace {
                        // Replace a token-sized span.
                        let end = (at + noise.len()).min(s.len());
                        s.splice(at..end, noise.bytes());
                    } else {
                        s.splice(at..at, noise.bytes());
                    }
                }
                s
            }),
        prop::collection::vec(any::<u8>(), 0..256),
        // Deep nesting.
        (1usize..2_000).prop_map(|depth| {
            let mut s = "{\"error\":".repeat(depth).into_bytes();
            s.extend(std::iter::repeat_n(b'}', depth));
            s
        }),
    ]
}

/// A reading a corpus set must give: dimension, limit, remaining, reset.
type Reading = (Dimension, u64, u64, Duration);

/// What each set of [`corpus`] means, in the same order: the readings and the retry wait, at
/// 2026-11-23T11:00:00Z.
fn corpus_readings() -> Vec<(Vec<Reading>, Option<Duration>)> {
    let ms = Duration::from_millis;
    vec![
        (
            vec![
                (Dimension::Requests, 4_000, 3_999, ms(1_000)),
                (Dimension::InputTokens, 2_000_000, 1_999_000, ms(1_000)),
                (Dimension::OutputTokens, 400_000, 399_000, ms(2_500)),
                (Dimension::Tokens, 2_400_000, 2_398_000, ms(2_000)),
            ],
            None,
        ),
        (
            vec![(Dimension::InputTokens, 30_000, 0, ms(17_000))],
            Some(ms(17_000)),
        ),
        (
            vec![
                (Dimension::Requests, 10_000, 9_999, ms(6)),
                (Dimension::Tokens, 30_000_000, 29_999_000, ms(62_345)),
            ],
            Some(ms(1_500)),
        ),
        (vec![(Dimension::Requests, 100, 42, ms(30_000))], None),
        (
            vec![(Dimension::Requests, 100, 0, ms(50_000))],
            Some(ms(50_000)),
        ),
        // The GitHub reset is the epoch second of `date`: now.
        (vec![(Dimension::Requests, 5_000, 4_987, ms(0))], None),
        (vec![], Some(ms(3_000))),
        (vec![], None),
    ]
}

/// The seed corpus parses, and each real set is read as the provider means it.
#[test]
fn corpus_parses() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_431_600);
    let expected = corpus_readings();
    assert_eq!(expected.len(), corpus().len());
    for (i, (set, (readings, wait))) in corpus().into_iter().zip(expected).enumerate() {
        let mut map = HeaderMap::new();
        for (name, value) in set {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let snapshot = RateLimitSnapshot::from_headers_at(&map, now);
        let hints = RetryHints::from_headers_at(&map, now);
        let got: Vec<_> = snapshot
            .iter()
            .map(|(dimension, r)| (dimension, r.limit(), r.remaining(), r.reset()))
            .collect();
        let want: Vec<_> = readings
            .into_iter()
            .map(|(d, limit, remaining, reset)| (d, Some(limit), Some(remaining), Some(reset)))
            .collect();
        assert_eq!(got, want, "corpus set {i}");
        assert_eq!(hints.retry_after(), wait, "corpus set {i}");
    }
}

// ---------------------------------------------------------------------------------------------
// Extreme numbers through the whole stack (issue 19, item 3)
// ---------------------------------------------------------------------------------------------

/// Extreme values for every numeric field a server sends: 0, 1, the integer limits, negatives,
/// NaN and infinities, and the same in each field's shape (durations, timestamps, structured
/// fields).
const EXTREME: &[&str] = &[
    "0",
    "1",
    "-1",
    "-0",
    "0.0",
    "0.5",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-18446744073709551615",
    "NaN",
    "-NaN",
    "inf",
    "-inf",
    "1e308",
    "1.7976931348623157e308",
    "0.000000001",
    "18446744073709551615ms",
    "18446744073709551615s",
    "18446744073709551615h",
    "2562047h47m16.854775807s",
    "9999-12-31T23:59:59Z",
    "0000-01-01T00:00:00Z",
    "1970-01-01T00:00:00Z",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "Thu, 01 Jan 1970 00:00:00 GMT",
    "\"p\";q=18446744073709551615;w=18446744073709551615",
    "\"p\";q=0;w=0",
    "\"p\";q=1;w=1",
    "\"p\";r=18446744073709551615;t=18446744073709551615",
    "\"p\";r=0;t=0",
    "\"p\";r=-1;t=-1",
    "18446744073709551615;w=18446744073709551615",
];

/// The numeric headers of every dialect (and the retry hints).
const NUMERIC_HEADERS: &[&str] = &[
    "retry-after",
    "retry-after-ms",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-limit",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-limit",
    "anthropic-ratelimit-output-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset",
    "anthropic-priority-input-tokens-limit",
    "anthropic-priority-input-tokens-remaining",
    "anthropic-priority-input-tokens-reset",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-used",
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "date",
];

/// One answer of the hostile server: a status and numeric headers with extreme values.
fn extreme_answer() -> impl Strategy<Value = (u16, Vec<(&'static str, &'static str)>)> {
    (
        prop::sample::select(&[200u16, 429, 529, 503, 500, 403, 408][..]),
        prop::collection::vec(
            (
                prop::sample::select(NUMERIC_HEADERS),
                prop::sample::select(EXTREME),
            ),
            0..12,
        ),
    )
}

/// Every header of every dialect set to the same extreme value, on a 429 (the issue's
/// `*-limit: 18446744073709551615` among them).
fn every_field(value: &'static str) -> (u16, Vec<(&'static str, &'static str)>) {
    (429, NUMERIC_HEADERS.iter().map(|n| (*n, value)).collect())
}

/// Which stack [`drive`] sends through.
#[derive(Clone, Copy, Debug)]
enum Stack {
    /// A whole preset: 0 anthropic, 1 openai, 2 generic.
    Preset(u8),
    /// The preset's layers without the rate limiter: retry (0 anthropic, 1 openai, 2 generic
    /// policy), breaker, adaptive concurrency, signals, error body.
    WithoutRateLimiter(u8),
}

/// Sends `calls` requests through `stack` over a server that gives `answers` in turn, on a
/// paused clock; panics (overflow included) fail the property.
fn drive(stack: Stack, answers: Vec<(u16, Vec<(&'static str, &'static str)>)>, calls: usize) {
    use bytes::Bytes;
    use http_body_util::Full;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{Layer, ServiceExt};
    use tower_llm_limits::preset;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let answers = Arc::new(answers);
    let next = Arc::new(AtomicUsize::new(0));
    let server = tower::service_fn(move |_req: http::Request<Full<Bytes>>| {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let (status, headers) = &answers[i % answers.len()];
        let mut response = http::Response::builder().status(*status);
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        let response = response
            .body(Full::new(Bytes::from_static(b"{}")))
            .map_err(tower_llm_limits::BoxError::from);
        async move { response }
    });
    runtime.block_on(async move {
        let call = |server| async move {
            let request = http::Request::post("https://api.example.com/v1/messages")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"model":"m","max_tokens":18446744073709551615,"messages":[]}"#,
                )))
                .unwrap();
            let result = match stack {
                Stack::Preset(0) => preset::anthropic()
                    .layer(server)
                    .oneshot(request)
                    .await
                    .map(drop),
                Stack::Preset(1) => preset::openai()
                    .layer(server)
                    .oneshot(request)
                    .await
                    .map(drop),
                Stack::Preset(_) => preset::generic()
                    .layer(server)
                    .oneshot(request)
                    .await
                    .map(drop),
                Stack::WithoutRateLimiter(which) => {
                    use tower_llm_limits::{breaker, concurrency, retry, signals};
                    let policy = match which {
                        0 => retry::Policy::anthropic(),
                        1 => retry::Policy::openai(),
                        _ => retry::Policy::new(),
                    };
                    let concurrency = concurrency::AdaptiveConcurrencyLimitLayer::new(
                        concurrency::Aimd::new().initial(32).min(2).max(512),
                    )
                    .unwrap();
                    tower::ServiceBuilder::new()
                        .layer(retry::RetryLayer::new(policy))
                        .layer(breaker::CircuitBreakerLayer::new(breaker::Policy::new()))
                        .layer(concurrency)
                        .layer(signals::SignalsLayer::new())
                        .layer(tower_llm_limits::error_body::ErrorBodyLayer::new())
                        .service(server)
                        .oneshot(request)
                        .await
                        .map(drop)
                }
            };
            // Any outcome is fine (an error included); a panic or a hang is not.
            let _ = result;
        };
        let all = async {
            for _ in 0..calls {
                call(server.clone()).await;
            }
        };
        // Virtual time: a 49-day wait costs nothing; a hang shows as the timeout.
        tokio::time::timeout(Duration::from_secs(400 * 24 * 60 * 60), all)
            .await
            .expect("the stack neither hangs nor panics on extreme header values");
    });
}

proptest! {
    #![proptest_config(Config { cases: cases() / 4, ..config() })]

    /// Extreme numbers in any numeric header, through the preset's layers except the rate
    /// limiter (retry with each provider's policy, breaker, adaptive concurrency, signals, error
    /// body): no panic — overflow checks are on, see `overflow_checks_are_on` — and no hang.
    #[test]
    fn extreme_header_values_through_the_stack_without_the_rate_limiter(
        which in 0u8..3,
        answers in prop::collection::vec(extreme_answer(), 1..4),
    ) {
        drive(Stack::WithoutRateLimiter(which), answers, 3);
    }

    /// The same through every whole preset, rate limiter included.
    #[test]
    fn extreme_header_values_through_every_preset(
        which in 0u8..3,
        answers in prop::collection::vec(extreme_answer(), 1..4),
    ) {
        drive(Stack::Preset(which), answers, 3);
    }
}

/// Each extreme value in every numeric field at once, through every preset and the stack
/// without the rate limiter: the properties above might not draw a given combination; this
/// draws them all.
#[test]
fn every_extreme_value_in_every_field_through_every_stack() {
    for value in EXTREME {
        for which in 0..3 {
            for stack in [Stack::Preset(which), Stack::WithoutRateLimiter(which)] {
                drive(stack, vec![every_field(value), (200, vec![])], 3);
            }
        }
    }
}

/// The issue's case, as the property above shrinks it: a 429 with
/// `anthropic-ratelimit-input-tokens-limit: 18446744073709551615`, then a reading of that
/// bucket, through the Anthropic preset (the rate limiter's learners once added a server's
/// limit without saturating).
#[test]
fn a_u64_max_limit_then_a_reading_does_not_overflow_the_rate_limiter() {
    drive(
        Stack::Preset(0),
        vec![
            (
                429,
                vec![(
                    "anthropic-ratelimit-input-tokens-limit",
                    "18446744073709551615",
                )],
            ),
            (200, vec![("anthropic-ratelimit-input-tokens-reset", "0")]),
        ],
        3,
    );
}

/// A case the property found in release: a `max_tokens` of `u64::MAX` is reserved as the whole
/// of a combined `tokens` bucket (4,294,967,295, read empty on every answer): the rate limiter
/// waited for a full bucket while the other clients its readings taught it about kept taking
/// their share of the refill, a millisecond at a time, so the bucket was never full and the
/// call spun on the paused clock for ever.
#[test]
fn a_request_needing_the_whole_bucket_is_not_held_for_ever_by_other_clients() {
    drive(
        Stack::Preset(0),
        vec![(
            529,
            vec![
                ("anthropic-ratelimit-tokens-remaining", "0"),
                ("anthropic-ratelimit-tokens-limit", "4294967295"),
                ("anthropic-ratelimit-tokens-reset", "1e308"),
            ],
        )],
        3,
    );
}

/// This file runs with overflow checks on (the `test` profile inherits `dev`'s, and `.ci/run`
/// also runs it in release with `-C overflow-checks=on`): arithmetic overflow panics here rather
/// than wrapping silently.
#[test]
fn overflow_checks_are_on() {
    let max = std::hint::black_box(u64::MAX);
    let one = std::hint::black_box(1u64);
    assert!(
        std::panic::catch_unwind(|| max + one).is_err(),
        "built without overflow checks: the extreme-value properties would not catch a wrap"
    );
}

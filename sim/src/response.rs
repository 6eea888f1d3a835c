//! Rendering answers: bodies and the Anthropic header set.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, DATE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::api::{Shared, mix};
use super::config::HeaderDialect;
use super::faults::{ABSURD_RETRY_AFTER, Decisions, MALFORMED};

/// One bucket as reported in headers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reading {
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    pub(crate) until_full: Option<Duration>,
}

/// The buckets of a model at one instant (requests, input, output).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Snapshot {
    /// Since the API was built.
    pub(crate) at: Duration,
    pub(crate) readings: [Reading; 3],
}

#[derive(Clone, Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
    pub(crate) retry_after: Option<u64>,
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) spend_limit: bool,
    /// A Bedrock-style throttle: `x-amzn-errortype: ThrottlingException`, body as is.
    pub(crate) throttled: bool,
}

impl Answer {
    pub(crate) fn error(status: StatusCode, kind: &str, message: String) -> Self {
        Answer {
            status,
            body: json!({"type": "error", "error": {"type": kind, "message": message}}),
            retry_after: None,
            snapshot: None,
            spend_limit: false,
            throttled: false,
        }
    }

    /// Bedrock's throttle: 429, `x-amzn-errortype: ThrottlingException`, no `retry-after`.
    pub(crate) fn throttled() -> Self {
        Answer {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: json!({"message": "Too many requests, please wait before trying again."}),
            retry_after: None,
            snapshot: None,
            spend_limit: false,
            throttled: true,
        }
    }

    pub(crate) fn spend_limit() -> Self {
        Answer {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: json!({"type": "error", "error": {
                "type": "rate_limit_error",
                "message": "You have reached your specified API usage limits. You will regain access on the first day of next month.",
                "details": {"error_code": "enforced_spend_limit_reached"},
            }}),
            retry_after: None,
            snapshot: None,
            spend_limit: true,
            throttled: false,
        }
    }
}

/// The request id of the `seq`-th call: deterministic for a seed.
pub(crate) fn request_id(seed: u64, seq: u64) -> String {
    format!("req_sim_{:016x}{seq:08x}", mix(seed ^ mix(seq)))
}

const NANOS: u128 = 1_000_000_000;
/// 9999-12-31T23:59:59Z, the last time an HTTP-date can carry.
const LAST_HTTP_DATE: i64 = 253_402_300_799;

fn rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""))
}

/// Rounds to the nearest thousand (half up), like Anthropic's token `remaining`.
pub(crate) fn round_thousand(n: u64) -> u64 {
    n.saturating_add(500) / 1000 * 1000
}

fn ratelimit_headers(headers: &mut HeaderMap, shared: &Shared, snapshot: &Snapshot, skew: i64) {
    let dialect = shared.config.dialect;
    if dialect == HeaderDialect::Bedrock {
        return;
    }
    let epoch = shared.config.epoch;
    let round = shared.config.round_remaining;
    let mut put = |dim: &str, r: &Reading, tokens: bool| {
        let remaining = if tokens && round {
            round_thousand(r.remaining)
        } else {
            r.remaining
        };
        // Full at: epoch + admission time + time to full, rounded UP to the second.
        let full = r.until_full.unwrap_or(Duration::from_secs(60));
        let nanos = epoch
            .saturating_add(snapshot.at)
            .saturating_add(full)
            .as_nanos();
        let secs = i64::try_from(nanos.div_ceil(NANOS)).unwrap_or(i64::MAX);
        let reset = rfc3339(secs.saturating_add(skew));
        for (suffix, v) in [
            ("limit", r.limit.to_string()),
            ("remaining", remaining.to_string()),
            ("reset", reset),
        ] {
            let name = format!("anthropic-ratelimit-{dim}-{suffix}");
            if let Ok(name) = HeaderName::try_from(name) {
                headers.insert(name, value(&v));
            }
        }
    };
    let [req, input, output] = &snapshot.readings;
    put("requests", req, false);
    if dialect == HeaderDialect::Combined {
        // The input bucket is the combined one.
        put("tokens", input, true);
        return;
    }
    put("input-tokens", input, true);
    put("output-tokens", output, true);
    // The most restrictive token bucket: the smaller share left (input on a tie).
    let share = |r: &Reading| {
        if r.limit == 0 {
            0.0
        } else {
            r.remaining as f64 / r.limit as f64
        }
    };
    let tokens = if share(output) < share(input) {
        output
    } else {
        input
    };
    put("tokens", tokens, true);
}

/// The response for `answer`: body, content type, `request-id`, `date`, the rate-limit headers
/// (when the model is known), `retry-after`, and the header faults decided for the request.
pub(crate) fn render(
    shared: &Shared,
    seq: u64,
    answer: Answer,
    decisions: &Decisions,
) -> Response<Full<Bytes>> {
    let now = shared.elapsed(tokio::time::Instant::now());
    let skew = shared.config.faults.skew_at(now);
    let seed = shared.config.seed;
    let id = request_id(seed, seq);
    let mut body = answer.body;
    let error = answer.status != StatusCode::OK && !answer.throttled;
    if let (true, Some(obj)) = (error, body.as_object_mut()) {
        obj.insert("request_id".into(), Value::String(id.clone()));
    }
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("request-id", value(&id));
    let date_secs = i64::try_from(shared.config.epoch.saturating_add(now).as_secs())
        .unwrap_or(i64::MAX)
        .saturating_add(skew)
        .clamp(0, LAST_HTTP_DATE);
    let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(date_secs as u64));
    headers.insert(DATE, value(&date));
    if let Some(snapshot) = &answer.snapshot {
        ratelimit_headers(headers, shared, snapshot, skew);
    }
    if answer.throttled {
        headers.insert(
            "x-amzn-errortype",
            HeaderValue::from_static("ThrottlingException"),
        );
    }
    if let Some(secs) = answer.retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if decisions.malformed {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("anthropic-ratelimit-"))
            .cloned()
            .collect();
        for (i, name) in names.into_iter().enumerate() {
            let pick = mix(seed ^ mix(seq) ^ i as u64) as usize % MALFORMED.len();
            headers.insert(name, value(MALFORMED[pick]));
        }
    }
    if let Some(i) = decisions.absurd_retry_after {
        headers.insert(RETRY_AFTER, value(ABSURD_RETRY_AFTER[i]));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_formats() {
        assert_eq!(round_thousand(0), 0);
        assert_eq!(round_thousand(499), 0);
        assert_eq!(round_thousand(500), 1000);
        assert_eq!(round_thousand(29_499), 29_000);
        assert_eq!(rfc3339(1_767_225_605), "2026-01-01T00:00:05Z");
    }
}

//! Request bodies: the sim's token count, output length, and [`message_body`].

use bytes::Bytes;
use serde_json::{Value, json};

use super::config::InputCounting;

/// Input tokens charged per message, on top of its text.
pub const MESSAGE_OVERHEAD_TOKENS: u64 = 1;

/// The field of `metadata` the sim reads as the number of output tokens to produce.
/// Sim-only: the real API rejects unknown `metadata` fields.
pub const OUTPUT_HINT_FIELD: &str = "sim_output_tokens";

const FILLER: &[u8] = b"The quick brown fox jumps over the lazy dog while the rate limiter waits. ";

/// A request body the sim understood.
#[derive(Clone, Debug)]
pub(crate) struct Parsed {
    pub(crate) model: String,
    pub(crate) max_tokens: u64,
    pub(crate) input_tokens: u64,
    pub(crate) output_hint: Option<u64>,
}

/// Text bytes of a `system` or `content` value: a string, or an array of `text` blocks.
fn text_bytes(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.len() as u64,
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .map(|t| t.len() as u64)
            .sum(),
        _ => 0,
    }
}

/// The sim's input-token count of a Messages request body:
/// `ceil(B / 4) + M`, where `B` is the number of UTF-8 bytes of all text in `system` and in every
/// `messages[].content` (a string, or the `text` of its `text` blocks; other blocks count
/// nothing) and `M` the number of messages ([`MESSAGE_OVERHEAD_TOKENS`] each).
///
/// Returns `None` when the body is not a JSON object with a `messages` array.
///
/// ```
/// use tower_llm_limits_sim::{count_input_tokens, message_body};
///
/// let body = message_body("claude-sonnet-4-5", 1_200, 1_024, 300);
/// assert_eq!(count_input_tokens(&body), Some(1_200));
/// ```
pub fn count_input_tokens(body: &[u8]) -> Option<u64> {
    let value: Value = serde_json::from_slice(body).ok()?;
    count_value(&value)
}

/// Text bytes and the number of messages, `None` without a `messages` array.
fn text_and_messages(value: &Value) -> Option<(u64, u64)> {
    let messages = value.get("messages")?.as_array()?;
    let mut bytes = value.get("system").map(text_bytes).unwrap_or(0);
    for m in messages {
        bytes += m.get("content").map(text_bytes).unwrap_or(0);
    }
    Some((bytes, messages.len() as u64))
}

fn count_value(value: &Value) -> Option<u64> {
    let (bytes, messages) = text_and_messages(value)?;
    Some(bytes.div_ceil(4) + MESSAGE_OVERHEAD_TOKENS * messages)
}

/// `ceil(bytes / ratio)`, at least 0.
fn at_ratio(bytes: u64, ratio: f64) -> u64 {
    (bytes as f64 / ratio).ceil().max(0.0) as u64
}

/// A seeded number in `0.0..1.0` for `body` (the same body, the same number).
fn unit(seed: u64, body: &[u8]) -> f64 {
    (fnv1a(seed ^ 0x6465_6e73_6974_7900, body) >> 11) as f64 / (1u64 << 53) as f64
}

/// What a server counting by `counting` charges for `body` (parsed as `value`); `None`
/// without a `messages` array.
pub(crate) fn charged(
    counting: InputCounting,
    seed: u64,
    body: &[u8],
    value: &Value,
) -> Option<u64> {
    let (bytes, messages) = text_and_messages(value)?;
    Some(match counting {
        InputCounting::BodyBytes { bytes_per_token } => {
            at_ratio(body.len() as u64, bytes_per_token)
        }
        InputCounting::VaryingDensity {
            min_bytes_per_token: lo,
            max_bytes_per_token: hi,
        } => {
            let ratio = lo + (hi - lo) * unit(seed, body);
            at_ratio(bytes, ratio) + MESSAGE_OVERHEAD_TOKENS * messages
        }
        InputCounting::Text => bytes.div_ceil(4) + MESSAGE_OVERHEAD_TOKENS * messages,
    })
}

/// Parses a Messages request, counting input tokens by `counting`; `Err` carries the
/// `invalid_request_error` message.
pub(crate) fn parse(body: &[u8], counting: InputCounting, seed: u64) -> Result<Parsed, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("request body is not valid JSON: {e}"))?;
    if !value.is_object() {
        return Err("request body must be a JSON object".into());
    }
    let model = value
        .get("model")
        .and_then(Value::as_str)
        .ok_or("model: field required")?
        .to_owned();
    // Chat completions may name it `max_completion_tokens`.
    let max_tokens = value
        .get("max_tokens")
        .or_else(|| value.get("max_completion_tokens"))
        .and_then(Value::as_u64)
        .ok_or("max_tokens: field required (a positive integer)")?;
    if max_tokens == 0 {
        return Err("max_tokens: must be greater than or equal to 1".into());
    }
    match value.get("messages").and_then(Value::as_array) {
        None => return Err("messages: field required".into()),
        Some(m) if m.is_empty() => return Err("messages: at least one message is required".into()),
        Some(_) => {}
    }
    let input_tokens = charged(counting, seed, body, &value).unwrap_or(0);
    let output_hint = value
        .get("metadata")
        .and_then(|m| m.get(OUTPUT_HINT_FIELD))
        .and_then(Value::as_u64);
    Ok(Parsed {
        model,
        max_tokens,
        input_tokens,
        output_hint,
    })
}

/// FNV-1a, for the seeded output length of bodies without a hint.
pub(crate) fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    super::api::mix(h)
}

/// Output tokens produced for a request: the hint capped at `max_tokens`, else a seeded
/// function of the body within `max(1, max_tokens / 5)..=max_tokens`.
pub(crate) fn produced(parsed: &Parsed, seed: u64, body: &[u8]) -> u64 {
    match parsed.output_hint {
        Some(hint) => hint.min(parsed.max_tokens),
        None => {
            let lo = (parsed.max_tokens / 5).max(1);
            lo + fnv1a(seed, body) % (parsed.max_tokens - lo + 1)
        }
    }
}

/// ASCII filler text of exactly `len` bytes.
pub(crate) fn filler(len: usize) -> String {
    FILLER
        .iter()
        .cycle()
        .take(len)
        .map(|b| char::from(*b))
        .collect()
}

/// A Messages request body for `model` that the sim counts as exactly `input_tokens` input
/// tokens (at least 1: one user message whose text is `4 × (input_tokens − 1)` bytes) with
/// `max_tokens`, and that makes the sim produce exactly `min(output_tokens, max_tokens)` output
/// tokens, through the sim-only `metadata.sim_output_tokens` hint ([`OUTPUT_HINT_FIELD`]).
/// `max_tokens` of 0 is sent as 1.
///
/// ```
/// use tower_llm_limits_sim::message_body;
///
/// let body = message_body("claude-sonnet-4-5", 1_200, 1_024, 300);
/// let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
/// assert_eq!(json["max_tokens"], 1_024);
/// assert_eq!(json["metadata"]["sim_output_tokens"], 300);
/// ```
pub fn message_body(model: &str, input_tokens: u64, max_tokens: u64, output_tokens: u64) -> Bytes {
    let text_tokens = input_tokens.saturating_sub(MESSAGE_OVERHEAD_TOKENS);
    let len = usize::try_from(text_tokens.saturating_mul(4)).unwrap_or(usize::MAX);
    let max_tokens = max_tokens.max(1);
    let body = json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": filler(len)}],
        "metadata": {OUTPUT_HINT_FIELD: output_tokens.min(max_tokens)},
    });
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_function() {
        let body = br#"{"model":"m","max_tokens":5,"system":"abcde",
            "messages":[{"role":"user","content":"abc"},
                        {"role":"assistant","content":[{"type":"text","text":"abcdefgh"},{"type":"image"}]}]}"#;
        // B = 5 + 3 + 8 = 16 → 4 tokens, + 2 messages.
        assert_eq!(count_input_tokens(body), Some(6));
        assert_eq!(count_input_tokens(b"nope"), None);
        for n in [0, 1, 2, 5, 1_000, 12_345] {
            let b = message_body("m", n, 10, 3);
            assert_eq!(count_input_tokens(&b), Some(n.max(1)));
            let p = parse(&b, InputCounting::Text, 0).unwrap();
            assert_eq!(produced(&p, 1, &b), 3);
        }
    }

    #[test]
    fn output_without_hint_is_bounded_and_deterministic() {
        let body = br#"{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
        let p = parse(body, InputCounting::Text, 0).unwrap();
        let a = produced(&p, 9, body);
        assert_eq!(a, produced(&p, 9, body));
        assert!((20..=100).contains(&a));
    }

    #[test]
    fn other_countings() {
        let b = message_body("m", 1_001, 10, 3);
        let v: Value = serde_json::from_slice(&b).unwrap();
        let bytes = InputCounting::BodyBytes {
            bytes_per_token: 2.0,
        };
        assert_eq!(
            charged(bytes, 0, &b, &v),
            Some((b.len() as u64).div_ceil(2))
        );
        let density = InputCounting::VaryingDensity {
            min_bytes_per_token: 2.0,
            max_bytes_per_token: 5.0,
        };
        let n = charged(density, 3, &b, &v).unwrap();
        assert_eq!(charged(density, 3, &b, &v), Some(n));
        // 4,000 text bytes at 2 to 5 bytes per token, plus one message.
        assert!((801..=2_001).contains(&n), "{n}");
        let fixed = InputCounting::VaryingDensity {
            min_bytes_per_token: 4.0,
            max_bytes_per_token: 4.0,
        };
        assert_eq!(charged(fixed, 3, &b, &v), Some(1_001));
    }

    #[test]
    fn invalid_bodies() {
        assert!(parse(b"{", InputCounting::Text, 0).is_err());
        assert!(parse(b"[]", InputCounting::Text, 0).is_err());
        assert!(
            parse(
                br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
                InputCounting::Text,
                0
            )
            .is_err()
        );
        assert!(
            parse(
                br#"{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]}"#,
                InputCounting::Text,
                0
            )
            .is_err()
        );
        assert!(
            parse(
                br#"{"model":"m","max_tokens":1,"messages":[]}"#,
                InputCounting::Text,
                0
            )
            .is_err()
        );
    }
}

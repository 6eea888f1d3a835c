//! The built-in estimator for Anthropic Messages and OpenAI chat / responses JSON bodies.
//!
//! The body is read in one pass with serde's visitor interface, without building a
//! `serde_json::Value`: strings are counted where they lie in the body (no allocation unless they
//! contain escapes, and then into the parser's scratch buffer), every other value is checked and
//! skipped. The rate limiter's default key ([`DefaultKey`](crate::rate_limit::DefaultKey)) and
//! default cost ([`DefaultCost`](super::DefaultCost)) share one pass per request: the first of
//! them to run leaves what it read in the request's extensions for the other.

use std::fmt;

use http::Request;
use serde::Deserializer as _;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::{BodyBytes, DEFAULT_BYTES_PER_TOKEN};
use crate::rate_limit::RateLimitKey;

/// Input tokens counted for each image or document block, whatever its size (Anthropic bills an
/// image of about 1.15 megapixels at about 1,600 tokens; smaller images cost less).
pub const IMAGE_TOKENS: u64 = 1_600;

/// Tokens added per message for role markers and separators.
const PER_MESSAGE_TOKENS: u64 = 4;

/// What the built-in estimator reads from a JSON request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyInfo {
    model: Option<String>,
    input_tokens: u64,
    max_tokens: Option<u64>,
}

impl BodyInfo {
    /// The `model` field.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Estimated input tokens.
    pub fn input_tokens(&self) -> u64 {
        self.input_tokens
    }

    /// `max_tokens`, `max_completion_tokens` or `max_output_tokens`, whichever is present.
    pub fn max_tokens(&self) -> Option<u64> {
        self.max_tokens
    }
}

/// Reads an Anthropic Messages, OpenAI chat-completions or OpenAI responses body.
///
/// Input tokens ≈ bytes of text / [`DEFAULT_BYTES_PER_TOKEN`]: the text is every string in
/// `system`, `messages`, `input`, `instructions`, `prompt` and the JSON of `tools` (tool
/// definitions are billed), plus a few tokens per message; image and document blocks count
/// [`IMAGE_TOKENS`] each (their base64 data is not text). Returns `None` when the body is not a
/// JSON object.
///
/// A key repeated inside one object of the text fields is counted each time it appears (a JSON
/// parser that keeps the last of them would count it once): the estimate errs high, as it is
/// meant to. A repeated top-level field counts once, its last value.
pub fn inspect_json(body: &[u8]) -> Option<BodyInfo> {
    let scan = scan(body)?;
    Some(BodyInfo {
        input_tokens: scan.input_tokens(DEFAULT_BYTES_PER_TOKEN),
        max_tokens: scan.max_tokens,
        model: scan.model.map(String::from),
    })
}

/// What one pass over a body found, independent of the bytes-per-token setting.
#[derive(Clone, Default)]
pub(crate) struct Scan<M> {
    pub(crate) model: Option<M>,
    text_bytes: u64,
    fixed: u64,
    pub(crate) max_tokens: Option<u64>,
}

impl<M> Scan<M> {
    pub(crate) fn input_tokens(&self, bytes_per_token: f64) -> u64 {
        let text_tokens = (self.text_bytes as f64 / bytes_per_token).ceil() as u64;
        text_tokens.saturating_add(self.fixed)
    }

    fn map_model<N>(self, f: impl FnOnce(M) -> N) -> Scan<N> {
        Scan {
            model: self.model.map(f),
            text_bytes: self.text_bytes,
            fixed: self.fixed,
            max_tokens: self.max_tokens,
        }
    }
}

/// One pass over `body`: `None` when it is not a JSON object.
pub(super) fn scan(body: &[u8]) -> Option<Scan<std::borrow::Cow<'_, str>>> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let scan = de.deserialize_any(TopVisitor).ok()??;
    de.end().ok()?;
    Some(scan)
}

/// What a request's body said, cached in its extensions so the key and the cost functions read
/// the body once between them. `None`: not a JSON object (or its bytes are not available).
#[derive(Clone)]
pub(crate) struct Inspected(Option<Scan<RateLimitKey>>);

impl Inspected {
    fn of_bytes(body: &[u8]) -> Self {
        Inspected(scan(body).map(|s| s.map_model(|m| RateLimitKey::new(&*m))))
    }

    /// The scan of `request`'s body: the cached one, else read now (from the body's bytes when
    /// available) without caching it.
    pub(crate) fn get<B: BodyBytes>(request: &Request<B>) -> Option<Self> {
        if let Some(cached) = request.extensions().get::<Inspected>() {
            return Some(cached.clone());
        }
        request
            .body()
            .body_bytes()
            .map(|bytes| Inspected::of_bytes(&bytes))
    }

    /// Like [`get`](Self::get), and leaves the result in the request's extensions.
    pub(crate) fn get_cached<B: BodyBytes>(request: &mut Request<B>) -> Option<Self> {
        if let Some(cached) = request.extensions().get::<Inspected>() {
            return Some(cached.clone());
        }
        let inspected = Inspected::of_bytes(&request.body().body_bytes()?);
        request.extensions_mut().insert(inspected.clone());
        Some(inspected)
    }

    pub(crate) fn scan(&self) -> Option<&Scan<RateLimitKey>> {
        self.0.as_ref()
    }

    /// The `model` of the body, as a key.
    pub(crate) fn model(self) -> Option<RateLimitKey> {
        self.0?.model
    }
}

impl fmt::Debug for Inspected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inspected").finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// The visitors. Each accepts any JSON value (so the body is validated exactly as a full parse
// would: every string's UTF-8 and escapes, every number's range) and returns what it counts.

/// A top-level field the estimator reads.
enum Field {
    Model,
    MaxTokens(usize),
    Text(usize),
    Tools,
    Other,
}

/// The text fields: `system`, `messages`, `input`, `instructions`, `prompt`.
const TEXT_FIELDS: usize = 5;
const MESSAGES: usize = 1;

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
        Ok(match v {
            "model" => Field::Model,
            "max_tokens" => Field::MaxTokens(0),
            "max_completion_tokens" => Field::MaxTokens(1),
            "max_output_tokens" => Field::MaxTokens(2),
            "system" => Field::Text(0),
            "messages" => Field::Text(MESSAGES),
            "input" => Field::Text(2),
            "instructions" => Field::Text(3),
            "prompt" => Field::Text(4),
            "tools" => Field::Tools,
            _ => Field::Other,
        })
    }
}

impl<'de> DeserializeSeed<'de> for FieldVisitor {
    type Value = Field;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        d.deserialize_any(self)
    }
}

/// Implements the visit methods of a visitor that accepts any value, with a default result for
/// the kinds it does not handle itself.
macro_rules! accept_any {
    (@one bool, $d:expr) => { fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> { Ok($d) } };
    (@one i64, $d:expr) => { fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> { Ok($d) } };
    (@one u64, $d:expr) => { fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> { Ok($d) } };
    (@one f64, $d:expr) => { fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> { Ok($d) } };
    (@one str, $d:expr) => { fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> { Ok($d) } };
    (@one unit, $d:expr) => { fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> { Ok($d) } };
    (@one seq, $d:expr) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element_seed(Skip)?.is_some() {}
            Ok($d)
        }
    };
    (@one map, $d:expr) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_key_seed(Skip)?.is_some() {
                map.next_value_seed(Skip)?;
            }
            Ok($d)
        }
    };
    ($default:expr; $($skip:ident),*) => {
        $(accept_any!(@one $skip, $default);)*
    };
}

/// Implements `DeserializeSeed` for a visitor through `deserialize_any`.
macro_rules! seed {
    ($t:ty) => {
        impl<'de> DeserializeSeed<'de> for $t {
            type Value = <$t as Visitor<'de>>::Value;
            fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
        }
    };
}

/// Reads and discards any value.
#[derive(Clone, Copy)]
struct Skip;

impl<'de> Visitor<'de> for Skip {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    accept_any!((); bool, i64, u64, f64, str, unit, seq, map);
}
seed!(Skip);

/// The top-level object; anything else is `None`.
struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Option<Scan<std::borrow::Cow<'de, str>>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    accept_any!(None; bool, i64, u64, f64, str, unit, seq);

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Each field keeps its last value, as a map would.
        let mut model = None;
        let mut max_tokens = [None; 3];
        let mut text = [Count::default(); TEXT_FIELDS];
        let mut messages = None;
        let mut tools = 0;
        while let Some(field) = map.next_key_seed(FieldVisitor)? {
            match field {
                Field::Model => model = map.next_value_seed(ModelVisitor)?,
                Field::MaxTokens(i) => max_tokens[i] = map.next_value_seed(U64Visitor)?,
                Field::Text(i) if i == MESSAGES => {
                    let (count, len) = map.next_value_seed(MessagesVisitor)?;
                    text[i] = count;
                    messages = len;
                }
                Field::Text(i) => text[i] = map.next_value_seed(Walk)?,
                Field::Tools => tools = map.next_value_seed(JsonLen)?,
                Field::Other => map.next_value_seed(Skip)?,
            }
        }
        let mut count = Count::default();
        for c in text {
            count.add(c);
        }
        count.fixed += PER_MESSAGE_TOKENS * messages.unwrap_or(0) as u64;
        count.text_bytes += tools;
        Ok(Some(Scan {
            model,
            text_bytes: count.text_bytes,
            fixed: count.fixed,
            max_tokens: max_tokens.into_iter().flatten().next(),
        }))
    }
}

/// `model`: a string, else nothing.
struct ModelVisitor;

impl<'de> Visitor<'de> for ModelVisitor {
    type Value = Option<std::borrow::Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    accept_any!(None; bool, i64, u64, f64, unit, seq, map);
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(std::borrow::Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(std::borrow::Cow::Owned(v.to_owned())))
    }
}
seed!(ModelVisitor);

/// `max_tokens` and friends: a non-negative integer, else nothing.
struct U64Visitor;

impl<'de> Visitor<'de> for U64Visitor {
    type Value = Option<u64>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    accept_any!(None; bool, i64, f64, str, unit, seq, map);
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
}
seed!(U64Visitor);

/// Text bytes and fixed tokens of a value.
#[derive(Clone, Copy, Default)]
struct Count {
    text_bytes: u64,
    fixed: u64,
}

impl Count {
    fn add(&mut self, other: Count) {
        self.text_bytes += other.text_bytes;
        self.fixed += other.fixed;
    }

    fn text(bytes: usize) -> Self {
        Count {
            text_bytes: bytes as u64,
            fixed: 0,
        }
    }
}

/// Counts the text of any value: every string's bytes, every number's printed length; an image
/// or document block counts [`IMAGE_TOKENS`]; structural fields (`type`, `role`, ids,
/// `cache_control`) are not text.
struct Walk;

impl<'de> Visitor<'de> for Walk {
    type Value = Count;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    accept_any!(Count::default(); bool, unit);

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Count, E> {
        Ok(Count::text(v.len()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
        Ok(Count::text(number_len(serde_json::Number::from(v))))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
        Ok(Count::text(number_len(serde_json::Number::from(v))))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
        Ok(Count::text(
            serde_json::Number::from_f64(v).map_or(0, number_len),
        ))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
        let mut count = Count::default();
        while let Some(c) = seq.next_element_seed(Walk)? {
            count.add(c);
        }
        Ok(count)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
        let mut count = Count::default();
        // The last `type` decides, as in a map.
        let mut image = false;
        while let Some(key) = map.next_key_seed(KeyVisitor)? {
            match key {
                Key::Type => image = map.next_value_seed(ImageType)?,
                Key::Structural => map.next_value_seed(Skip)?,
                Key::Text => count.add(map.next_value_seed(Walk)?),
            }
        }
        Ok(if image {
            Count {
                text_bytes: 0,
                fixed: IMAGE_TOKENS,
            }
        } else {
            count
        })
    }
}
seed!(Walk);

/// `messages`: its text, and its length when it is an array.
struct MessagesVisitor;

impl<'de> Visitor<'de> for MessagesVisitor {
    type Value = (Count, Option<usize>);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Walk.visit_bool(v).map(|c| (c, None))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Walk.visit_u64(v).map(|c| (c, None))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Walk.visit_i64(v).map(|c| (c, None))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Walk.visit_f64(v).map(|c| (c, None))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Walk.visit_str(v).map(|c| (c, None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Walk.visit_unit().map(|c| (c, None))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Walk.visit_map(map).map(|c| (c, None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut count = Count::default();
        let mut len = 0;
        while let Some(c) = seq.next_element_seed(Walk)? {
            count.add(c);
            len += 1;
        }
        Ok((count, Some(len)))
    }
}
seed!(MessagesVisitor);

/// A key inside the text fields.
enum Key {
    Type,
    Structural,
    Text,
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match v {
            "type" => Key::Type,
            "role" | "id" | "tool_use_id" | "call_id" | "cache_control" => Key::Structural,
            _ => Key::Text,
        })
    }
}
seed!(KeyVisitor);

/// Whether a `type` value names an image or document block.
struct ImageType;

impl<'de> Visitor<'de> for ImageType {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    accept_any!(false; bool, i64, u64, f64, unit, seq, map);
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(matches!(
            v,
            "image" | "image_url" | "input_image" | "document" | "input_file" | "file"
        ))
    }
}
seed!(ImageType);

/// The length of a value written back as compact JSON (`tools` is billed as its JSON).
struct JsonLen;

impl<'de> Visitor<'de> for JsonLen {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<u64, E> {
        Ok(if v { 4 } else { 5 })
    }
    fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
        Ok(4)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(number_len(serde_json::Number::from(v)) as u64)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        Ok(number_len(serde_json::Number::from(v)) as u64)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        // A parsed number is finite; a non-finite one would be written `null`.
        Ok(serde_json::Number::from_f64(v).map_or(4, number_len) as u64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        Ok(escaped_len(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut len = 2;
        let mut items = 0;
        while let Some(l) = seq.next_element_seed(JsonLen)? {
            len += l;
            items += 1;
        }
        Ok(len + commas(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut len = 2;
        let mut entries = 0;
        while let Some(key) = map.next_key_seed(JsonLen)? {
            // `"key":value`
            len += key + 1 + map.next_value_seed(JsonLen)?;
            entries += 1;
        }
        Ok(len + commas(entries))
    }
}
seed!(JsonLen);

fn commas(items: u64) -> u64 {
    items.saturating_sub(1)
}

/// The length of `s` as a JSON string literal written by `serde_json`, quotes included.
fn escaped_len(s: &str) -> u64 {
    let extra: usize = s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | 0x08 | b'\t' | b'\n' | 0x0c | b'\r' => 1,
            0..=0x1f => 5,
            _ => 0,
        })
        .sum();
    (s.len() + extra + 2) as u64
}

/// The length of a number as `serde_json` prints it.
fn number_len(n: serde_json::Number) -> usize {
    struct Len(usize);
    impl fmt::Write for Len {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0 += s.len();
            Ok(())
        }
    }
    let mut len = Len(0);
    let _ = fmt::write(&mut len, format_args!("{n}"));
    len.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn anthropic_messages() {
        let body = br#"{"model":"claude-sonnet-4-5","max_tokens":1024,
            "system":"You are terse.",
            "messages":[{"role":"user","content":"Hello there, how are you?"},
                        {"role":"user","content":[{"type":"text","text":"abcdefg"},
                          {"type":"image","source":{"type":"base64","data":"AAAAAAAAAAAAAAAA"}}]}]}"#;
        let info = inspect_json(body).unwrap();
        assert_eq!(info.model(), Some("claude-sonnet-4-5"));
        assert_eq!(info.max_tokens(), Some(1024));
        // text: 14 + 25 + 7 = 46 bytes → ceil(46 / 3.5) = 14; + 2 messages × 4 + 1 image
        assert_eq!(info.input_tokens(), 14 + 8 + IMAGE_TOKENS);
    }

    #[test]
    fn openai_chat_and_responses() {
        let chat = br#"{"model":"gpt-4o","max_completion_tokens":50,
            "messages":[{"role":"user","content":"1234567"}]}"#;
        let info = inspect_json(chat).unwrap();
        assert_eq!((info.max_tokens(), info.input_tokens()), (Some(50), 2 + 4));
        let responses = br#"{"model":"gpt-4o","max_output_tokens":9,"input":"1234567","instructions":"1234567"}"#;
        let info = inspect_json(responses).unwrap();
        assert_eq!((info.max_tokens(), info.input_tokens()), (Some(9), 4));
        assert!(inspect_json(b"[1,2]").is_none());
        assert!(inspect_json(b"{not json").is_none());
        assert!(inspect_json(br#"{"a":1} x"#).is_none());
        assert!(inspect_json(br#"{"metadata":"\ud800"}"#).is_none());
        assert!(inspect_json(br#"{"metadata":1e999}"#).is_none());
    }

    #[test]
    fn the_type_and_a_repeated_field_read_as_in_a_map() {
        // The image's `type` comes last; a repeated top-level field keeps its last value.
        let body = br#"{"model":1,"model":"m\u0031","max_tokens":5,"max_tokens":"x","max_output_tokens":7,
            "messages":[{"source":{"data":"AAAA"},"type":"image"},{"type":"image","type":"text","text":"ab"}]}"#;
        let info = inspect_json(body).unwrap();
        assert_eq!(info.model(), Some("m1"));
        assert_eq!(info.max_tokens(), Some(7));
        assert_eq!(info.input_tokens(), IMAGE_TOKENS + 1 + 2 * 4);
    }

    /// The estimator as it was written first, on a `serde_json::Value`: the reference the
    /// one-pass reader must agree with.
    fn reference(body: &[u8]) -> Option<BodyInfo> {
        #[derive(Default)]
        struct Count {
            text_bytes: u64,
            fixed: u64,
        }
        impl Count {
            fn walk(&mut self, v: &Value) {
                match v {
                    Value::String(s) => self.text_bytes += s.len() as u64,
                    Value::Array(items) => items.iter().for_each(|i| self.walk(i)),
                    Value::Object(map) => {
                        let kind = map.get("type").and_then(Value::as_str).unwrap_or("");
                        if matches!(
                            kind,
                            "image"
                                | "image_url"
                                | "input_image"
                                | "document"
                                | "input_file"
                                | "file"
                        ) {
                            self.fixed += IMAGE_TOKENS;
                            return;
                        }
                        for (k, v) in map {
                            if !matches!(
                                k.as_str(),
                                "type"
                                    | "role"
                                    | "id"
                                    | "tool_use_id"
                                    | "call_id"
                                    | "cache_control"
                            ) {
                                self.walk(v);
                            }
                        }
                    }
                    Value::Number(n) => self.text_bytes += n.to_string().len() as u64,
                    Value::Bool(_) | Value::Null => {}
                }
            }
        }
        let value: Value = serde_json::from_slice(body).ok()?;
        let obj = value.as_object()?;
        let model = obj.get("model").and_then(Value::as_str).map(str::to_owned);
        let max_tokens = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(Value::as_u64));
        let mut count = Count::default();
        for field in ["system", "messages", "input", "instructions", "prompt"] {
            if let Some(v) = obj.get(field) {
                count.walk(v);
            }
        }
        if let Some(messages) = obj.get("messages").and_then(Value::as_array) {
            count.fixed += PER_MESSAGE_TOKENS * messages.len() as u64;
        }
        if let Some(tools) = obj.get("tools") {
            count.text_bytes += tools.to_string().len() as u64;
        }
        let text_tokens = (count.text_bytes as f64 / DEFAULT_BYTES_PER_TOKEN).ceil() as u64;
        Some(BodyInfo {
            model,
            input_tokens: text_tokens.saturating_add(count.fixed),
            max_tokens,
        })
    }

    /// Random JSON values built from a small alphabet of keys (including every key the
    /// estimator treats specially) and awkward strings and numbers.
    fn random_value(rng: &mut fastrand::Rng, depth: u32) -> Value {
        const KEYS: &[&str] = &[
            "model",
            "max_tokens",
            "max_completion_tokens",
            "max_output_tokens",
            "system",
            "messages",
            "input",
            "instructions",
            "prompt",
            "tools",
            "type",
            "role",
            "id",
            "tool_use_id",
            "call_id",
            "cache_control",
            "content",
            "text",
            "source",
            "x\"y",
        ];
        const STRINGS: &[&str] = &[
            "",
            "image",
            "document",
            "text",
            "file",
            "image_url",
            "héllo wörld",
            "tab\there",
            "quote\"back\\slash",
            "ctrl\u{1}\u{1f}\u{7f}",
            "line\nbreak\r\u{8}\u{c}",
            "🦀",
        ];
        let leaf = depth == 0 || rng.u8(..4) == 0;
        match if leaf { rng.u8(..5) } else { rng.u8(..7) } {
            0 => Value::Null,
            1 => Value::Bool(rng.bool()),
            2 => match rng.u8(..4) {
                0 => Value::from(rng.u64(..)),
                1 => Value::from(rng.i64(..0)),
                2 => Value::from(rng.f64() * 10f64.powi(rng.i32(-30..30))),
                _ => Value::from(rng.u64(..2000)),
            },
            3 | 4 => Value::from(STRINGS[rng.usize(..STRINGS.len())]),
            5 => Value::Array(
                (0..rng.usize(..5))
                    .map(|_| random_value(rng, depth - 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..rng.usize(..6))
                    .map(|_| {
                        let key = KEYS[rng.usize(..KEYS.len())].to_string();
                        (key, random_value(rng, depth - 1))
                    })
                    .collect(),
            ),
        }
    }

    const TOP_KEYS: &[&str] = &[
        "model",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "system",
        "messages",
        "input",
        "instructions",
        "prompt",
        "tools",
        "temperature",
        "stream",
    ];

    #[test]
    fn one_pass_agrees_with_the_value_based_reference() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut objects = 0;
        for _ in 0..20_000 {
            let value = if rng.u8(..10) == 0 {
                random_value(&mut rng, 4)
            } else {
                Value::Object(
                    (0..rng.usize(..8))
                        .map(|_| {
                            let key = TOP_KEYS[rng.usize(..TOP_KEYS.len())].to_string();
                            (key, random_value(&mut rng, 4))
                        })
                        .collect(),
                )
            };
            objects += usize::from(value.is_object());
            let body = serde_json::to_vec(&value).unwrap();
            assert_eq!(
                inspect_json(&body),
                reference(&body),
                "{}",
                String::from_utf8_lossy(&body)
            );
            let pretty = serde_json::to_vec_pretty(&value).unwrap();
            assert_eq!(inspect_json(&pretty), reference(&pretty));
        }
        assert!(objects > 15_000, "{objects}");
    }
}

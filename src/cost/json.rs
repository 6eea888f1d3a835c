//! The built-in estimator for Anthropic Messages and OpenAI chat / responses JSON bodies.
//!
//! The body is read once by `serde_json` into a borrowed struct of the fields the estimate needs
//! (`model`, the `max_*tokens` fields, the text fields and `tools`): every other field is skipped
//! ([`IgnoredAny`]), and the text fields are counted as they are read, without building a
//! `serde_json::Value` or copying a string that has no escapes. The rate limiter's default key
//! ([`DefaultKey`](crate::rate_limit::DefaultKey)) and default cost
//! ([`DefaultCost`](super::DefaultCost)) share one read per request: the first of them to run
//! leaves what it read in the request's extensions for the other.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::Request;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{BodyBytes, DEFAULT_BYTES_PER_TOKEN};

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
/// Input tokens ≈ bytes of text / [`DEFAULT_BYTES_PER_TOKEN`]: the text is every string (and the
/// printed length of every number) in `system`, `messages`, `input`, `instructions` and
/// `prompt`, without the structural fields (`type`, `role`, ids, `cache_control`), plus the
/// length of `tools` written as compact JSON (tool definitions are billed), plus a few tokens
/// per message; image and document blocks count [`IMAGE_TOKENS`] each (their base64 data is not
/// text). `model` is read when it is a string, the output limit when it is a non-negative
/// integer.
///
/// Returns `None` when the body is not a JSON object, or names one top-level field twice. The
/// fields the estimate does not read are checked for JSON syntax only (as `serde_json` skips
/// them: a lone surrogate escape in a string there is let through).
/// A key repeated inside one object of the text fields is counted each time it appears: the
/// estimate errs high, as it is meant to.
pub fn inspect_json(body: &[u8]) -> Option<BodyInfo> {
    let scan = scan(body)?;
    Some(BodyInfo {
        input_tokens: scan.input_tokens(DEFAULT_BYTES_PER_TOKEN),
        max_tokens: scan.max_tokens,
        model: scan.model.map(String::from),
    })
}

/// What one read of a body found, independent of the bytes-per-token setting.
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

/// What a request's body said, cached in its extensions so the key and the cost functions read
/// the body once between them. `None`: not a JSON object (or its bytes are not available). The
/// model is shared: the rate limiter's key is made from it without a copy.
#[derive(Clone)]
pub(crate) struct Inspected(Option<Scan<Arc<str>>>);

impl Inspected {
    fn of_bytes(body: &[u8]) -> Self {
        Inspected(scan(body).map(|s| s.map_model(|m| Arc::from(&*m))))
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

    pub(crate) fn scan(&self) -> Option<&Scan<Arc<str>>> {
        self.0.as_ref()
    }

    /// The `model` of the body.
    pub(crate) fn model(self) -> Option<Arc<str>> {
        self.0?.model
    }
}

impl fmt::Debug for Inspected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inspected").finish_non_exhaustive()
    }
}

/// One read of `body`: `None` when it is not a JSON object.
pub(super) fn scan(body: &[u8]) -> Option<Scan<Cow<'_, str>>> {
    // A derived struct also reads an array (its fields in order): only an object is a body.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let body: Body<'_> = serde_json::from_slice(body).ok()?;
    let mut count = Count::default();
    for text in [
        body.system,
        body.messages.text,
        body.input,
        body.instructions,
        body.prompt,
    ] {
        count.add(text);
    }
    count.fixed += PER_MESSAGE_TOKENS * body.messages.len;
    count.text_bytes += body.tools.0;
    Some(Scan {
        model: body.model.0,
        text_bytes: count.text_bytes,
        fixed: count.fixed,
        max_tokens: [
            body.max_tokens,
            body.max_completion_tokens,
            body.max_output_tokens,
        ]
        .into_iter()
        .find_map(|m| m.0),
    })
}

/// The fields of a body the estimate reads; the others are skipped.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    model: Model<'a>,
    #[serde(default)]
    max_tokens: MaxTokens,
    #[serde(default)]
    max_completion_tokens: MaxTokens,
    #[serde(default)]
    max_output_tokens: MaxTokens,
    #[serde(default)]
    system: Count,
    #[serde(default)]
    messages: Messages,
    #[serde(default)]
    input: Count,
    #[serde(default)]
    instructions: Count,
    #[serde(default)]
    prompt: Count,
    #[serde(default)]
    tools: JsonLen,
}

/// `model`: a string (borrowed from the body unless it has escapes), else nothing.
#[derive(Default)]
struct Model<'a>(Option<Cow<'a, str>>);

/// An output limit: a non-negative integer, else nothing.
#[derive(Default)]
struct MaxTokens(Option<u64>);

/// An image or document block's `type`: whether a string names one.
struct ImageType(bool);

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

/// `messages`: its text, and how many messages it holds when it is an array.
#[derive(Default)]
struct Messages {
    text: Count,
    len: u64,
}

/// The length of a value written back as compact JSON by `serde_json` (`tools` is billed as
/// its JSON).
#[derive(Default)]
struct JsonLen(u64);

/// The scalar a field holds, for the fields that want one (`model`, `max_tokens`, `type`);
/// arrays and objects are skipped.
enum Scalar<'de> {
    Str(Cow<'de, str>),
    Int(i128),
    Other,
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_map(map).map(|_| Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Model<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Model(match Scalar::deserialize(d)? {
            Scalar::Str(s) => Some(s),
            _ => None,
        }))
    }
}

impl<'de> Deserialize<'de> for MaxTokens {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(MaxTokens(match Scalar::deserialize(d)? {
            Scalar::Int(n) => u64::try_from(n).ok(),
            _ => None,
        }))
    }
}

/// The `type` values of image and document blocks.
const IMAGE_TYPES: [&str; 6] = [
    "image",
    "image_url",
    "input_image",
    "document",
    "input_file",
    "file",
];

impl<'de> Deserialize<'de> for ImageType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ImageType(match Scalar::deserialize(d)? {
            Scalar::Str(s) => IMAGE_TYPES.contains(&&*s),
            _ => false,
        }))
    }
}

/// A key inside the text fields: `type`, a structural field (not text), or any other.
enum TextKey {
    Type,
    Structural,
    Other,
}

impl<'de> Deserialize<'de> for TextKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TextKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, key: &str) -> Result<TextKey, E> {
                Ok(match key {
                    "type" => TextKey::Type,
                    "role" | "id" | "tool_use_id" | "call_id" | "cache_control" => {
                        TextKey::Structural
                    }
                    _ => TextKey::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// The text of a value: every string's bytes, every number's printed length; an image or
/// document block (the last `type` of an object decides) counts [`IMAGE_TOKENS`].
struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Count;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E>(self, s: &str) -> Result<Count, E> {
        Ok(Count::text(s.len()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Count, E> {
        Ok(Count::text(number_len(&v.into())))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Count, E> {
        Ok(Count::text(number_len(&v.into())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Count, E> {
        Ok(Count::text(
            serde_json::Number::from_f64(v).map_or(0, |n| number_len(&n)),
        ))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Count, E> {
        Ok(Count::default())
    }
    fn visit_unit<E>(self) -> Result<Count, E> {
        Ok(Count::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
        let mut count = Count::default();
        while let Some(item) = seq.next_element::<Count>()? {
            count.add(item);
        }
        Ok(count)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
        let mut count = Count::default();
        let mut image = false;
        while let Some(key) = map.next_key::<TextKey>()? {
            match key {
                TextKey::Type => image = map.next_value::<ImageType>()?.0,
                TextKey::Structural => drop(map.next_value::<IgnoredAny>()?),
                TextKey::Other => count.add(map.next_value::<Count>()?),
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

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor)
    }
}

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// An array counts its messages; any other value is text.
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Messages;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages, A::Error> {
                let mut messages = Messages::default();
                while let Some(item) = seq.next_element::<Count>()? {
                    messages.text.add(item);
                    messages.len += 1;
                }
                Ok(messages)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Messages, A::Error> {
                TextVisitor.visit_map(map).map(Messages::of_text)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Messages, E> {
                TextVisitor.visit_str(s).map(Messages::of_text)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Messages, E> {
                TextVisitor.visit_u64(v).map(Messages::of_text)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Messages, E> {
                TextVisitor.visit_i64(v).map(Messages::of_text)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Messages, E> {
                TextVisitor.visit_f64(v).map(Messages::of_text)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Messages, E> {
                Ok(Messages::default())
            }
            fn visit_unit<E>(self) -> Result<Messages, E> {
                Ok(Messages::default())
            }
        }
        d.deserialize_any(V)
    }
}

impl Messages {
    fn of_text(text: Count) -> Self {
        Messages { text, len: 0 }
    }
}

/// A key of an object inside `tools`: the length of its JSON string.
struct KeyLen(u64);

impl<'de> Deserialize<'de> for KeyLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyLen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, key: &str) -> Result<KeyLen, E> {
                Ok(KeyLen(escaped_len(key)))
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> Deserialize<'de> for JsonLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonLen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, s: &str) -> Result<JsonLen, E> {
                Ok(JsonLen(escaped_len(s)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<JsonLen, E> {
                Ok(JsonLen(number_len(&v.into()) as u64))
            }
            fn visit_i64<E>(self, v: i64) -> Result<JsonLen, E> {
                Ok(JsonLen(number_len(&v.into()) as u64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<JsonLen, E> {
                // What `serde_json` writes for a float it cannot represent: `null`.
                Ok(JsonLen(
                    serde_json::Number::from_f64(v).map_or(4, |n| number_len(&n) as u64),
                ))
            }
            fn visit_bool<E>(self, v: bool) -> Result<JsonLen, E> {
                Ok(JsonLen(if v { 4 } else { 5 }))
            }
            fn visit_unit<E>(self) -> Result<JsonLen, E> {
                Ok(JsonLen(4))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonLen, A::Error> {
                // `[a,b]`: brackets, items, commas between them.
                let (mut len, mut items) = (2u64, 0u64);
                while let Some(item) = seq.next_element::<JsonLen>()? {
                    len += item.0;
                    items += 1;
                }
                Ok(JsonLen(len + items.saturating_sub(1)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonLen, A::Error> {
                // `{"k":v,"l":w}`: braces, `key:value` entries, commas between them.
                let (mut len, mut entries) = (2u64, 0u64);
                while let Some((key, value)) = map.next_entry::<KeyLen, JsonLen>()? {
                    len += key.0 + 1 + value.0;
                    entries += 1;
                }
                Ok(JsonLen(len + entries.saturating_sub(1)))
            }
        }
        d.deserialize_any(V)
    }
}

/// The length of the text `s` as a JSON string literal written by `serde_json`, quotes included.
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
fn number_len(n: &serde_json::Number) -> usize {
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

    /// The estimate of `body` at [`DEFAULT_BYTES_PER_TOKEN`]: text bytes and fixed tokens.
    fn tokens(text_bytes: u64, fixed: u64) -> u64 {
        (text_bytes as f64 / DEFAULT_BYTES_PER_TOKEN).ceil() as u64 + fixed
    }

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
    }

    #[test]
    fn only_a_json_object_is_read() {
        for body in [
            &b"[1,2]"[..],
            br#"["m",5]"#,
            b"{not json",
            br#"{"a":1} x"#,
            br#"{"input":"\ud800"}"#,
            br#"{"model":"\udd80"}"#,
            br#"{"input":1e999}"#,
            br#"{"metadata":[1,]}"#,
            br#"{"a":1,}"#,
            br#"{"input":"tab	inside"}"#,
            b"{\"input\":\"\xe2\x82\"}",
            b"\xef\xbb\xbf{}",
            b"",
        ] {
            assert!(
                inspect_json(body).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(inspect_json(b" \n{\"input\":\"\xe2\x82\xac\"} \t").is_some());
    }

    #[test]
    fn the_last_type_decides_and_a_repeated_top_level_field_is_refused() {
        // The image's `type` comes last; in the second block `text` comes last.
        let body = br#"{"model":"m\u0031","max_tokens":"x","max_output_tokens":7,
            "messages":[{"source":{"data":"AAAA"},"type":"image"},{"type":"image","type":"text","text":"ab"}]}"#;
        let info = inspect_json(body).unwrap();
        assert_eq!(info.model(), Some("m1"));
        assert_eq!(info.max_tokens(), Some(7));
        assert_eq!(info.input_tokens(), IMAGE_TOKENS + 1 + 2 * 4);
        // As serde's derive reads a struct: the body is then costed as opaque bytes.
        assert!(inspect_json(br#"{"model":"a","model":"b"}"#).is_none());
    }

    #[test]
    fn fields_of_an_unexpected_type_are_read_as_nothing() {
        let body = br#"{"model":1,"max_tokens":-5,"max_completion_tokens":2.5,"system":null,
            "messages":"abc","input":true,"instructions":{"role":"x","id":"y","text":"abcd"}}"#;
        let info = inspect_json(body).unwrap();
        assert_eq!(info.model(), None);
        assert_eq!(info.max_tokens(), None);
        // 3 + 4 bytes of text; `messages` is not an array: no per-message tokens.
        assert_eq!(info.input_tokens(), tokens(7, 0));
        let info = inspect_json(br#"{"max_tokens":18446744073709551615}"#).unwrap();
        assert_eq!(info.max_tokens(), Some(u64::MAX));
    }

    #[test]
    fn text_is_counted_decoded_and_numbers_as_printed() {
        // "é\n" is 3 bytes decoded; -12 is 3 bytes, 1.5e3 prints as 1500.0 (6), 0 as 0 (1).
        let body = br#"{"input":["\u00e9\n", -12, 1.5e3, 0, true, null]}"#;
        assert_eq!(
            inspect_json(body).unwrap().input_tokens(),
            tokens(3 + 3 + 6 + 1, 0)
        );
        // Structural fields are not text; documents and files are fixed charges.
        let body = br#"{"messages":[{"role":"user","content":[{"type":"text","text":"abc",
            "cache_control":{"type":"ephemeral"}},{"type":"document","source":{}},
            {"type":"tool_result","tool_use_id":"toolu_0123456789","content":"xyz"}]}]}"#;
        assert_eq!(
            inspect_json(body).unwrap().input_tokens(),
            tokens(6, IMAGE_TOKENS + 4)
        );
    }

    #[test]
    fn tools_are_billed_as_compact_json() {
        let tools = r#"[{"name":"get_weather","description":"Weather \"now\"\n",
            "input_schema":{"type":"object","properties":{"n":{"type":"integer","minimum":-1.5}},
            "required":["n"],"strict":true,"extra":null,"flag":false}}]"#;
        let compact =
            serde_json::to_string(&serde_json::from_str::<serde_json::Value>(tools).unwrap())
                .unwrap()
                .len() as u64;
        let body = format!(r#"{{"tools": {tools} }}"#);
        assert_eq!(
            inspect_json(body.as_bytes()).unwrap().input_tokens(),
            tokens(compact, 0)
        );
    }

    #[test]
    fn nesting_is_limited_as_in_serde_json() {
        let body = |depth: usize| {
            format!(
                "{{\"input\":{}\"x\"{}}}",
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        assert_eq!(
            inspect_json(body(100).as_bytes()).unwrap().input_tokens(),
            1
        );
        assert!(inspect_json(body(10_000).as_bytes()).is_none());
    }
}

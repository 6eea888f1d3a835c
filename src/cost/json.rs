//! The built-in estimator for Anthropic Messages and OpenAI chat / responses JSON bodies.
//!
//! The body is read in one pass by a small scanner, without building a `serde_json::Value`:
//! strings are counted where they lie in the body (nothing is copied unless a key or the model
//! has escapes), every other value is checked and skipped. It accepts exactly what
//! `serde_json::from_slice` accepts. The rate limiter's default key ([`DefaultKey`](crate::rate_limit::DefaultKey)) and
//! default cost ([`DefaultCost`](super::DefaultCost)) share one pass per request: the first of
//! them to run leaves what it read in the request's extensions for the other.

use std::fmt;

use std::borrow::Cow;
use std::cell::RefCell;

use http::Request;

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

/// What a request's body said, cached in its extensions so the key and the cost functions read
/// the body once between them. `None`: not a JSON object (or its bytes are not available).
#[derive(Clone)]
pub(crate) struct Inspected(Option<Scan<RateLimitKey>>);

impl Inspected {
    fn of_bytes(body: &[u8]) -> Self {
        Inspected(scan(body).map(|s| s.map_model(|m| model_key(&m))))
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

/// The key named after a model. The last one made on this thread is kept: a client sends the
/// same model again and again, and a clone of its key is not an allocation.
fn model_key(model: &str) -> RateLimitKey {
    thread_local! {
        static LAST: RefCell<Option<RateLimitKey>> = const { RefCell::new(None) };
    }
    LAST.try_with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some(key) if key.as_str() == model => key.clone(),
            _ => last.insert(RateLimitKey::new(model)).clone(),
        }
    })
    .unwrap_or_else(|_| RateLimitKey::new(model))
}

impl fmt::Debug for Inspected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inspected").finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// The scanner. It accepts exactly the documents `serde_json::from_slice::<Value>` accepts (the
// same grammar, string escapes and UTF-8 rules, nesting limit; numbers other than plain
// non-negative integers are handed to `serde_json` itself, so their range and printed form are
// its own), and counts as it goes. Inside a string it jumps from one quote or backslash to the
// next with `memchr` and checks the run in between for control characters and non-ASCII bytes.

/// `serde_json`'s nesting limit: the 128th nested array or object is refused.
const MAX_DEPTH: usize = 128;

/// The text fields: `system`, `messages`, `input`, `instructions`, `prompt`.
const TEXT_FIELDS: usize = 5;
const MESSAGES: usize = 1;

/// One pass over `body`: `None` when it is not a JSON object.
pub(super) fn scan(body: &[u8]) -> Option<Scan<Cow<'_, str>>> {
    let mut p = Parser {
        b: body,
        i: 0,
        depth: 0,
    };
    p.ws();
    if p.peek() != Some(b'{') {
        return None;
    }
    let scan = p.top()?;
    p.ws();
    (p.i == body.len()).then_some(scan)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    depth: usize,
}

/// A string as it lies in the body (between its quotes).
struct Str<'a> {
    raw: &'a [u8],
    /// The raw bytes are the text: no escapes (and valid UTF-8).
    plain: bool,
    /// Bytes of the decoded text.
    len: usize,
}

impl<'a> Str<'a> {
    /// The decoded bytes (copied only when the string has escapes): what keys are matched
    /// against, without a second UTF-8 check of bytes the scan has already checked.
    fn bytes(&self) -> Cow<'a, [u8]> {
        if self.plain {
            Cow::Borrowed(self.raw)
        } else {
            Cow::Owned(decode(self.raw).into_bytes())
        }
    }

    /// The decoded text (copied only when the string has escapes).
    fn text(&self) -> Cow<'a, str> {
        if self.plain {
            // Validated while scanning.
            Cow::Borrowed(std::str::from_utf8(self.raw).unwrap_or_default())
        } else {
            Cow::Owned(decode(self.raw))
        }
    }
}

/// A number: a plain non-negative integer, or what `serde_json` made of the token.
enum Num {
    Plain(u64, usize),
    Other(serde_json::Number),
}

impl Num {
    /// Its length as `serde_json` prints it.
    fn printed_len(&self) -> usize {
        match self {
            Num::Plain(_, len) => *len,
            Num::Other(n) => number_len(n),
        }
    }

    fn as_u64(&self) -> Option<u64> {
        match self {
            Num::Plain(v, _) => Some(*v),
            Num::Other(n) => n.as_u64(),
        }
    }
}

/// Whether every byte of `s` is plain printable ASCII or DEL (`0x20..=0x7F`): neither a control
/// character (refused in a string) nor part of a multi-byte character (to be checked as UTF-8).
/// One reduction, the largest `c - 0x20` (wrapping, so that control characters come out high),
/// kept in 64 lanes the compiler holds in vector registers.
fn printable_ascii(s: &[u8]) -> bool {
    const LANES: usize = 64;
    let (chunks, tail) = s.as_chunks::<LANES>();
    let mut lanes = [0u8; LANES];
    for chunk in chunks {
        lanes = std::array::from_fn(|j| lanes[j].max(chunk[j].wrapping_sub(0x20)));
    }
    let tail = tail.iter().fold(0, |m, &c| m.max(c.wrapping_sub(0x20)));
    lanes.iter().fold(tail, |m, &l| m.max(l)) < 0x60
}

/// How far the first look at a string goes before it searches for its end.
const SHORT_STRING: usize = 32;

/// The bytes that end a run of plain text inside a string: the quote, the backslash, control
/// characters and non-ASCII bytes.
const ENDS_PLAIN_RUN: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        table[c] = c < 0x20 || c >= 0x80 || c == b'"' as usize || c == b'\\' as usize;
        c += 1;
    }
    table
};

/// The smallest and the largest byte of `s` (`(255, 0)` when empty): the exact classification
/// of a run [`printable_ascii`] did not clear.
fn min_max(s: &[u8]) -> (u8, u8) {
    (
        s.iter().copied().min().unwrap_or(u8::MAX),
        s.iter().copied().max().unwrap_or(0),
    )
}

/// Tokens of an image or document block, or the text of any other value.
const IMAGE_TYPES: [&[u8]; 6] = [
    b"image",
    b"image_url",
    b"input_image",
    b"document",
    b"input_file",
    b"file",
];

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek() == Some(c)).then(|| self.i += 1)
    }

    /// `{ "key": value, … }`: `entry` reads each value after its key.
    fn object(&mut self, mut entry: impl FnMut(&mut Self, Str<'a>) -> Option<()>) -> Option<()> {
        self.sequence(b'{', b'}', |p| {
            let key = p.string()?;
            p.eat(b':')?;
            p.ws();
            entry(p, key)
        })
    }

    /// `[ value, … ]`: `item` reads each value.
    fn array(&mut self, item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.sequence(b'[', b']', item)
    }

    /// `open item, … close` (none allowed), one level deeper: `item` reads each element.
    fn sequence(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        self.enter()?;
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
        } else {
            loop {
                self.ws();
                item(self)?;
                self.ws();
                match self.peek()? {
                    b',' => self.i += 1,
                    c if c == close => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth < MAX_DEPTH).then_some(())
    }

    fn literal(&mut self) -> Option<()> {
        let rest = &self.b[self.i..];
        let len = [&b"true"[..], b"false", b"null"]
            .into_iter()
            .find(|l| rest.starts_with(l))?
            .len();
        self.i += len;
        Some(())
    }

    #[inline]
    fn string(&mut self) -> Option<Str<'a>> {
        if self.peek() != Some(b'"') {
            return None;
        }
        let b = self.b;
        let start = self.i + 1;
        // A short plain string (a key, a role, a model name): one look at each byte, no search.
        // Otherwise the search goes on after the plain bytes already seen.
        let head = &b[start..b.len().min(start + SHORT_STRING)];
        let plain_head = match head.iter().position(|&c| ENDS_PLAIN_RUN[usize::from(c)]) {
            Some(n) if head[n] == b'"' => {
                self.i = start + n + 1;
                return Some(Str {
                    raw: &head[..n],
                    plain: true,
                    len: n,
                });
            }
            Some(n) => n,
            None => head.len(),
        };
        self.long_string(start, start + plain_head)
    }

    /// The rest of a string that opened at `start` (after its quote), from `i`: every byte
    /// before `i` is plain printable ASCII.
    #[inline(never)]
    fn long_string(&mut self, start: usize, mut i: usize) -> Option<Str<'a>> {
        let b = self.b;
        let mut saved = 0usize;
        let mut plain = true;
        let mut ascii = true;
        loop {
            // The next quote or backslash (a vector search), then one look at the run before
            // it: plain printable ASCII (the usual case), else its smallest byte says whether
            // it holds a control character, its largest whether it holds non-ASCII bytes.
            let run = memchr::memchr2(b'"', b'\\', &b[i..])?;
            let text = &b[i..i + run];
            if !printable_ascii(text) {
                let (lo, hi) = min_max(text);
                if lo < 0x20 {
                    return None;
                }
                ascii &= hi < 0x80;
            }
            i += run;
            if b[i] == b'"' {
                break;
            }
            plain = false;
            let (raw, decoded) = escape(&b[i..])?;
            // Bytes the escapes save: the raw escape is longer than what it stands for.
            saved += raw - decoded;
            i += raw;
        }
        let raw = &b[start..i];
        self.i = i + 1;
        if !ascii {
            if plain {
                std::str::from_utf8(raw).ok()?;
            } else {
                decode_checked(raw)?;
            }
        }
        Some(Str {
            raw,
            plain,
            len: raw.len() - saved,
        })
    }

    fn number(&mut self) -> Option<Num> {
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let digits = |i: &mut usize| {
            let from = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > from
        };
        let negative = b.get(i) == Some(&b'-');
        i += usize::from(negative);
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => {
                digits(&mut i);
            }
            _ => return None,
        }
        let mut plain = !negative;
        if b.get(i) == Some(&b'.') {
            i += 1;
            plain = false;
            if !digits(&mut i) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            plain = false;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            if !digits(&mut i) {
                return None;
            }
        }
        self.i = i;
        let token = &b[start..i];
        if plain && token.len() <= 19 {
            let v = token
                .iter()
                .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
            return Some(Num::Plain(v, token.len()));
        }
        serde_json::from_slice(token).ok().map(Num::Other)
    }

    /// Any value, checked and dropped.
    fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(|p, _| p.skip()),
            b'[' => self.array(Self::skip),
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            _ => self.literal(),
        }
    }

    /// The text of a value: every string's bytes, every number's printed length; an image or
    /// document block counts [`IMAGE_TOKENS`]; structural fields (`type`, `role`, ids,
    /// `cache_control`) are not text.
    fn walk(&mut self) -> Option<Count> {
        match self.peek()? {
            b'{' => {
                let mut count = Count::default();
                // The last `type` decides, as in a map.
                let mut image = false;
                self.object(|p, key| {
                    match &*key.bytes() {
                        b"type" => image = p.image_type()?,
                        b"role" | b"id" | b"tool_use_id" | b"call_id" | b"cache_control" => {
                            p.skip()?
                        }
                        _ => count.add(p.walk()?),
                    }
                    Some(())
                })?;
                Some(if image {
                    Count {
                        text_bytes: 0,
                        fixed: IMAGE_TOKENS,
                    }
                } else {
                    count
                })
            }
            b'[' => {
                let mut count = Count::default();
                self.array(|p| {
                    count.add(p.walk()?);
                    Some(())
                })?;
                Some(count)
            }
            b'"' => Some(Count::text(self.string()?.len)),
            b'-' | b'0'..=b'9' => Some(Count::text(self.number()?.printed_len())),
            _ => self.literal().map(|()| Count::default()),
        }
    }

    /// `messages`: its text, and its length when it is an array.
    fn messages(&mut self) -> Option<(Count, Option<usize>)> {
        if self.peek()? != b'[' {
            return self.walk().map(|c| (c, None));
        }
        let mut count = Count::default();
        let mut len = 0;
        self.array(|p| {
            count.add(p.walk()?);
            len += 1;
            Some(())
        })?;
        Some((count, Some(len)))
    }

    /// Whether a `type` value names an image or document block.
    fn image_type(&mut self) -> Option<bool> {
        if self.peek()? == b'"' {
            let s = self.string()?;
            return Some(IMAGE_TYPES.contains(&&*s.bytes()));
        }
        self.skip().map(|()| false)
    }

    /// A string value, else nothing.
    fn model(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.peek()? == b'"' {
            return Some(Some(self.string()?.text()));
        }
        self.skip().map(|()| None)
    }

    /// A non-negative integer value, else nothing.
    fn max_tokens(&mut self) -> Option<Option<u64>> {
        if let b'-' | b'0'..=b'9' = self.peek()? {
            return Some(self.number()?.as_u64());
        }
        self.skip().map(|()| None)
    }

    /// The length of a value written back as compact JSON by `serde_json` (`tools` is billed
    /// as its JSON).
    fn json_len(&mut self) -> Option<u64> {
        match self.peek()? {
            b'{' => {
                let (mut len, mut entries) = (2u64, 0u64);
                self.object(|p, key| {
                    // `"key":value`
                    len += escaped_len(&key.bytes()) + 1 + p.json_len()?;
                    entries += 1;
                    Some(())
                })?;
                Some(len + entries.saturating_sub(1))
            }
            b'[' => {
                let (mut len, mut items) = (2u64, 0u64);
                self.array(|p| {
                    len += p.json_len()?;
                    items += 1;
                    Some(())
                })?;
                Some(len + items.saturating_sub(1))
            }
            b'"' => Some(escaped_len(&self.string()?.bytes())),
            b'-' | b'0'..=b'9' => Some(self.number()?.printed_len() as u64),
            b't' | b'n' => self.literal().map(|()| 4),
            _ => self.literal().map(|()| 5),
        }
    }

    /// The top-level object.
    fn top(&mut self) -> Option<Scan<Cow<'a, str>>> {
        // Each field keeps its last value, as a map would.
        let mut model = None;
        let mut max_tokens = [None; 3];
        let mut text = [Count::default(); TEXT_FIELDS];
        let mut messages = None;
        let mut tools = 0;
        self.object(|p, key| {
            match &*key.bytes() {
                b"model" => model = p.model()?,
                b"max_tokens" => max_tokens[0] = p.max_tokens()?,
                b"max_completion_tokens" => max_tokens[1] = p.max_tokens()?,
                b"max_output_tokens" => max_tokens[2] = p.max_tokens()?,
                b"system" => text[0] = p.walk()?,
                b"messages" => (text[MESSAGES], messages) = p.messages()?,
                b"input" => text[2] = p.walk()?,
                b"instructions" => text[3] = p.walk()?,
                b"prompt" => text[4] = p.walk()?,
                b"tools" => tools = p.json_len()?,
                _ => p.skip()?,
            }
            Some(())
        })?;
        let mut count = Count::default();
        for c in text {
            count.add(c);
        }
        count.fixed += PER_MESSAGE_TOKENS * messages.unwrap_or(0) as u64;
        count.text_bytes += tools;
        Some(Scan {
            model,
            text_bytes: count.text_bytes,
            fixed: count.fixed,
            max_tokens: max_tokens.into_iter().flatten().next(),
        })
    }
}

/// The escape at the start of `s` (`\n`, `\uXXXX`, a surrogate pair): its raw length and the
/// length of its UTF-8; `None` where `serde_json` refuses it.
fn escape(s: &[u8]) -> Option<(usize, usize)> {
    match s.get(1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some((2, 1)),
        b'u' => {
            let n = hex4(s.get(2..6)?)?;
            match n {
                0xDC00..=0xDFFF => None,
                0xD800..=0xDBFF => {
                    if s.get(6..8)? != b"\\u" {
                        return None;
                    }
                    let low = hex4(s.get(8..12)?)?;
                    (0xDC00..=0xDFFF).contains(&low).then_some((12, 4))
                }
                0..=0x7F => Some((6, 1)),
                0x80..=0x7FF => Some((6, 2)),
                _ => Some((6, 3)),
            }
        }
        _ => None,
    }
}

fn hex4(s: &[u8]) -> Option<u16> {
    s.iter().try_fold(0u16, |n, &c| {
        let d = (c as char).to_digit(16)?;
        Some(n * 16 + d as u16)
    })
}

/// Decodes a string's raw bytes (escapes already checked by the scan).
fn decode(raw: &[u8]) -> String {
    decode_checked(raw).unwrap_or_default()
}

/// Decodes a string's raw bytes; `None` when the result is not UTF-8.
fn decode_checked(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let (len, _) = escape(&raw[i..])?;
        let c = match raw[i + 1] {
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = u32::from(hex4(&raw[i + 2..i + 6])?);
                let code = if len == 12 {
                    let lo = u32::from(hex4(&raw[i + 8..i + 12])?);
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                char::from_u32(code)?
            }
            other => char::from(other),
        };
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        i += len;
    }
    String::from_utf8(out).ok()
}

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

/// The length of the text `s` as a JSON string literal written by `serde_json`, quotes included.
fn escaped_len(s: &[u8]) -> u64 {
    let extra: usize = s
        .iter()
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
    /// Asserts that the scanner reads `body` as the reference does; whether the body was
    /// accepted.
    fn agrees_with_reference(body: &[u8]) -> bool {
        let want = reference(body);
        assert_eq!(
            inspect_json(body),
            want,
            "{}",
            String::from_utf8_lossy(body)
        );
        want.is_some()
    }

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
            agrees_with_reference(&body);
            agrees_with_reference(&serde_json::to_vec_pretty(&value).unwrap());
        }
        assert!(objects > 15_000, "{objects}");
    }

    #[test]
    fn what_serde_json_refuses_is_refused() {
        // Mutations of valid bodies (a byte replaced, inserted or cut): the scanner accepts a
        // body exactly when `serde_json` does, and reads the same from it.
        const BYTES: &[u8] = b"{}[]\",:0123456789-+.eEtrufalsn \t\n\\/ubx\x01\xc3\xa9\xff\xed";
        let mut rng = fastrand::Rng::with_seed(11);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let value = Value::Object(
                (0..rng.usize(1..6))
                    .map(|_| {
                        let key = TOP_KEYS[rng.usize(..TOP_KEYS.len())].to_string();
                        (key, random_value(&mut rng, 3))
                    })
                    .collect(),
            );
            let mut body = serde_json::to_vec(&value).unwrap();
            for _ in 0..rng.usize(1..3) {
                let at = rng.usize(..body.len());
                match rng.u8(..3) {
                    0 => body[at] = BYTES[rng.usize(..BYTES.len())],
                    1 => body.insert(at, BYTES[rng.usize(..BYTES.len())]),
                    _ => body.truncate(at),
                }
                if body.is_empty() {
                    break;
                }
            }
            accepted += usize::from(agrees_with_reference(&body));
        }
        assert!(accepted > 1_000, "{accepted}");
        for body in [
            &br#"{"m":"\ud83e\udd80","model":"\u00e9\/"}"#[..],
            br#"{"model":"\ud83e"}"#,
            br#"{"model":"\udd80"}"#,
            br#"{"model":"\ud83e\u0041"}"#,
            br#"{"model":"a\qb"}"#,
            br#"{"max_tokens":18446744073709551615,"input":[-0,1.5e3,1E400]}"#,
            br#"{"max_tokens":18446744073709551616,"input":[-0,1.5e3,-12]}"#,
            br#"{"input":[01]}"#,
            br#"{"input":"tab	inside"}"#,
            b"{\"input\":\"\xe2\x82\"}",
            b" \n{\"input\":\"\xe2\x82\xac\"} \t",
            br#"{"a":1,}"#,
            br#"{"a":[1,]}"#,
            br#"{1:2}"#,
            br#"{"a" 1}"#,
            br#"{"a":tru}"#,
            b"\xef\xbb\xbf{}",
        ] {
            assert_eq!(
                inspect_json(body),
                reference(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn strings_of_every_length_agree_with_serde_json() {
        // Plain text of 0 to 200 bytes (across the short-string look and the 64-byte lanes)
        // with one awkward byte or escape at a random place: a control character, DEL,
        // non-ASCII (valid or not), a quote or a backslash (escaped or raw).
        const AWKWARD: &[&[u8]] = &[
            b"\x01",
            b"\x1f",
            b"\x7f",
            b" ",
            b"~",
            b"\xc3\xa9",
            b"\xf0\x9f\xa6\x80",
            b"\xc3",
            b"\x80",
            b"\xc2\x80",
            b"\xff",
            b"\\\"",
            b"\\\\",
            b"\\n",
            b"\\u00e9",
            b"\\ud83e\\udd80",
            b"\\ud83e",
            b"\\",
            b"\"",
        ];
        let mut rng = fastrand::Rng::with_seed(5);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let len = rng.usize(..200);
            let mut text: Vec<u8> = (0..len).map(|_| rng.u8(0x20..0x7f)).collect();
            text.retain(|&c| c != b'"' && c != b'\\');
            if rng.u8(..4) != 0 {
                let at = rng.usize(..=text.len());
                let awkward = AWKWARD[rng.usize(..AWKWARD.len())];
                text.splice(at..at, awkward.iter().copied());
            }
            let field = TOP_KEYS[rng.usize(..TOP_KEYS.len())];
            let mut body = format!("{{\"{field}\":[\"").into_bytes();
            body.extend_from_slice(&text);
            body.extend_from_slice(b"\",\"");
            body.extend_from_slice(&text);
            body.extend_from_slice(b"\"]}");
            accepted += usize::from(agrees_with_reference(&body));
        }
        assert!(accepted > 5_000, "{accepted}");
    }

    #[test]
    fn model_keys_are_named_after_the_model() {
        for model in ["m1", "m1", "m2", "m1", "", "m2"] {
            assert_eq!(model_key(model), RateLimitKey::new(model));
            assert_eq!(model_key(model).as_str(), model);
        }
    }

    #[test]
    fn nesting_limit_as_serde_json() {
        for depth in 120..135 {
            let body = format!(
                "{{\"input\":{}\"x\"{}}}",
                "[".repeat(depth),
                "]".repeat(depth)
            );
            assert_eq!(
                inspect_json(body.as_bytes()),
                reference(body.as_bytes()),
                "{depth}"
            );
        }
    }
}

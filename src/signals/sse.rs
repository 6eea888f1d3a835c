//! Server-sent events, read incrementally as the bytes of a stream pass by.
//!
//! [`SseParser`] implements the event-stream format of the WHATWG HTML standard (lines ended by
//! CRLF, LF or CR; `field: value`; `:` comments; a blank line dispatches the event; `data` lines
//! joined with `\n`; `id` and `retry` ignored) as a **push** parser: it is fed the chunks of a
//! body as they go to the caller and calls back once per complete event. A chunk may end
//! anywhere — inside a field name, between a CR and its LF — and the events are the same as if
//! the stream had arrived in one piece. [`StreamEvent`] reads what one event says to a client
//! that paces, retries and breaks circuits (usage, errors, the end of an answer) for Anthropic
//! Messages, OpenAI chat completions and OpenAI responses streams.
//!
//! **Why not an SSE crate.** The well-kept SSE crates (`eventsource-stream`, `sse-stream`) wrap a
//! `Stream` of bytes and *yield events* in their place, buffering each event until it is whole.
//! This crate must hand every byte on to the caller as it arrives, unchanged, and only watch: a
//! parser that is fed slices and keeps nothing but the unfinished event is the shape needed, and
//! the format is a few dozen lines.
//!
//! **Bounded memory.** Only the current line (when it spans chunks) and the current event's
//! `data` are kept, at most [`MAX_EVENT_BYTES`] together; a larger event is reported with
//! [`SseEvent::is_oversized`] and its data dropped. A parser made
//! [`skipping_content`](SseParser::skipping_content) (as the crate's own watcher is) does not
//! keep the `data` of events that carry only content (Anthropic's `content_block_*` and `ping`).

/// The most bytes of one event's `data` kept for reading (1 MiB): far above any event that
/// carries usage or an error, which are a few hundred bytes.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// One dispatched event: its name (`message` when the stream gave none) and its `data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    name: &'a str,
    data: &'a [u8],
    oversized: bool,
}

impl<'a> SseEvent<'a> {
    /// The event's name: the last `event:` field, or `message`.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The event's `data` lines joined with `\n` (empty when it was not kept: oversized, or an
    /// event whose data this crate never reads).
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// `true` when the event was larger than [`MAX_EVENT_BYTES`] and its data was dropped.
    pub fn is_oversized(&self) -> bool {
        self.oversized
    }
}

/// Event names whose data is never read: kept out of memory.
fn data_unread(name: &[u8]) -> bool {
    matches!(
        name,
        b"content_block_delta" | b"content_block_start" | b"content_block_stop" | b"ping"
    )
}

/// An incremental server-sent-events parser; see the [module docs](self).
///
/// # Examples
///
/// ```
/// use tower_llm_limits::signals::sse::SseParser;
///
/// let stream = b"event: ping\r\ndata: {}\r\n\r\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
/// let mut parser = SseParser::new();
/// let mut names = Vec::new();
/// // Any split gives the same events.
/// let (a, b) = stream.split_at(17);
/// parser.feed(a, |e| names.push(e.name().to_owned()));
/// parser.feed(b, |e| names.push(e.name().to_owned()));
/// assert_eq!(names, ["ping", "message_stop"]);
/// ```
#[derive(Clone, Debug, Default)]
pub struct SseParser {
    /// The start of a line that did not end in the last chunk.
    line: Vec<u8>,
    /// The line outgrew the bound: the rest of it is dropped.
    line_overflow: bool,
    /// The last chunk ended with a CR: an LF at the start of the next one belongs to it.
    after_cr: bool,
    /// No line has ended yet (a byte-order mark may open the stream).
    first_line: bool,
    name: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    oversized: bool,
    max: usize,
    skip_content: bool,
}

impl SseParser {
    /// A parser keeping at most [`MAX_EVENT_BYTES`] of one event.
    pub fn new() -> Self {
        Self::with_max(MAX_EVENT_BYTES)
    }

    /// A parser keeping at most `max` bytes of one event.
    pub fn with_max(max: usize) -> Self {
        SseParser {
            first_line: true,
            max,
            ..SseParser::default()
        }
    }

    /// Drops the `data` of content events (`content_block_start`, `content_block_delta`,
    /// `content_block_stop`, `ping`): they are still reported, with empty data. For a watcher
    /// that reads usage, errors and the end of a stream, never the text.
    pub fn skipping_content(mut self) -> Self {
        self.skip_content = true;
        self
    }

    fn unread(&self) -> bool {
        self.skip_content && data_unread(&self.name)
    }

    /// Feeds the next chunk of the stream; `on_event` is called for each event it completes.
    pub fn feed(&mut self, mut chunk: &[u8], mut on_event: impl FnMut(SseEvent<'_>)) {
        if chunk.is_empty() {
            return;
        }
        if std::mem::take(&mut self.after_cr) && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        while let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            let mut next = end + 1;
            if chunk[end] == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.line.is_empty() && !self.line_overflow {
                self.line_end(&chunk[..end], &mut on_event);
            } else {
                self.push_line(&chunk[..end]);
                let line = std::mem::take(&mut self.line);
                self.line_end(&line, &mut on_event);
                self.line = line;
                self.line.clear();
                self.line_overflow = false;
            }
            chunk = &chunk[next..];
        }
        self.push_line(chunk);
    }

    fn push_line(&mut self, part: &[u8]) {
        if self.line_overflow || part.is_empty() {
            return;
        }
        if self.line.len() + part.len() > self.max {
            let keep = self.max.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..keep]);
            self.line_overflow = true;
        } else {
            self.line.extend_from_slice(part);
        }
    }

    fn line_end(&mut self, mut line: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        if std::mem::take(&mut self.first_line) {
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.name.clear();
                self.name
                    .extend_from_slice(&value[..value.len().min(self.max)]);
            }
            b"data" => {
                let overflow = self.line_overflow;
                let unread = self.unread();
                if self.has_data && !unread {
                    self.push_data(b"\n");
                }
                self.has_data = true;
                if overflow {
                    self.oversized = true;
                } else if !unread {
                    self.push_data(value);
                }
            }
            _ => {}
        }
    }

    fn push_data(&mut self, part: &[u8]) {
        if self.oversized {
            return;
        }
        if self.data.len() + part.len() > self.max {
            self.oversized = true;
            self.data = Vec::new();
        } else {
            self.data.extend_from_slice(part);
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) {
        if self.has_data {
            let name = match std::str::from_utf8(&self.name) {
                Ok("") | Err(_) => "message",
                Ok(name) => name,
            };
            let data: &[u8] = if self.oversized { b"" } else { &self.data };
            on_event(SseEvent {
                name,
                data,
                oversized: self.oversized,
            });
        }
        self.name.clear();
        self.data.clear();
        self.has_data = false;
        self.oversized = false;
    }
}

/// Token counts found in a stream event; either may be missing (Anthropic's `message_delta`
/// carries only the output).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventUsage {
    /// Input tokens counted towards the input limit.
    pub input_tokens: Option<u64>,
    /// Output tokens produced so far (cumulative).
    pub output_tokens: Option<u64>,
}

impl EventUsage {
    /// The counts of a `usage` object as the limits count them.
    fn of(counts: &crate::cost::UsageCounts) -> Self {
        EventUsage {
            input_tokens: counts.input(),
            output_tokens: counts.output(),
        }
    }
}

/// What one event of an LLM answer stream says; see [`StreamEvent::read`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// Anthropic `message_start` (the input usage, output 1 or so), or OpenAI responses'
    /// `response.created`: an answer that must end with a terminal event.
    Start(EventUsage),
    /// Anthropic `message_delta` (cumulative output usage), or an OpenAI chat chunk (with its
    /// usage on the final chunk when `stream_options.include_usage` is set).
    Progress(EventUsage),
    /// A chat completion chunk's first sight: the stream must end with `[DONE]`.
    ChatChunk(EventUsage),
    /// The answer ended normally: Anthropic `message_stop`, OpenAI `[DONE]`, OpenAI responses'
    /// `response.completed` / `response.incomplete` (with its usage).
    Stop(EventUsage),
    /// An error inside the stream: Anthropic `event: error`, an OpenAI `{"error":{…}}` chunk,
    /// OpenAI responses' `error` / `response.failed`.
    Error(super::ApiError),
    /// Anything else (`ping`, content blocks, unknown events).
    Other,
}

impl StreamEvent {
    /// Reads one event of an Anthropic Messages, OpenAI chat completions or OpenAI responses
    /// stream.
    ///
    /// ```
    /// use tower_llm_limits::signals::sse::{EventUsage, SseParser, StreamEvent};
    ///
    /// let stream = concat!(
    ///     "event: message_start\n",
    ///     "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
    ///     "event: error\n",
    ///     "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    /// );
    /// let mut events = Vec::new();
    /// SseParser::new().feed(stream.as_bytes(), |e| events.push(StreamEvent::read(&e)));
    /// assert_eq!(events[0], StreamEvent::Start(EventUsage { input_tokens: Some(25), output_tokens: Some(1) }));
    /// let StreamEvent::Error(error) = &events[1] else { panic!() };
    /// assert_eq!(error.kind(), Some("overloaded_error"));
    /// ```
    pub fn read(event: &SseEvent<'_>) -> StreamEvent {
        match event.name() {
            "message_stop" | "response.completed" | "response.incomplete" => {
                StreamEvent::Stop(usage_of(event.data()).unwrap_or_default())
            }
            "message_start" | "response.created" => {
                StreamEvent::Start(usage_of(event.data()).unwrap_or_default())
            }
            "message_delta" => StreamEvent::Progress(usage_of(event.data()).unwrap_or_default()),
            "error" | "response.failed" => StreamEvent::Error(
                super::ApiError::from_json(event.data())
                    .or_else(|| response_error(event.data()))
                    .unwrap_or_default(),
            ),
            "message" => read_unnamed(event.data()),
            _ => StreamEvent::Other,
        }
    }
}

/// An event without a name: OpenAI chat chunks, `[DONE]`, an error chunk; or a stream that puts
/// the event's type only in its JSON.
fn read_unnamed(data: &[u8]) -> StreamEvent {
    if data.trim_ascii() == b"[DONE]" {
        return StreamEvent::Stop(EventUsage::default());
    }
    #[derive(serde::Deserialize)]
    struct Chunk<'a> {
        #[serde(rename = "type", borrow, default)]
        kind: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, default)]
        object: Option<std::borrow::Cow<'a, str>>,
        #[serde(default)]
        error: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        usage: Option<crate::cost::UsageCounts>,
    }
    let Ok(chunk) = serde_json::from_slice::<Chunk<'_>>(data) else {
        return StreamEvent::Other;
    };
    if let Some(kind) = chunk.kind.as_deref()
        && kind != "message"
    {
        // Anthropic's and OpenAI responses' events name their type in the JSON too.
        return StreamEvent::read(&SseEvent {
            name: kind,
            data,
            oversized: false,
        });
    }
    if chunk.error.is_some() {
        return StreamEvent::Error(super::ApiError::from_json(data).unwrap_or_default());
    }
    let usage = chunk.usage.as_ref().map(EventUsage::of).unwrap_or_default();
    if chunk.object.as_deref() == Some("chat.completion.chunk") {
        StreamEvent::ChatChunk(usage)
    } else {
        StreamEvent::Progress(usage)
    }
}

/// The usage in an event's JSON: `usage` at the top (Anthropic `message_delta`, OpenAI chunks),
/// in `message` (Anthropic `message_start`) or in `response` (OpenAI responses).
fn usage_of(data: &[u8]) -> Option<EventUsage> {
    #[derive(serde::Deserialize)]
    struct Holder {
        #[serde(default)]
        usage: Option<crate::cost::UsageCounts>,
    }
    #[derive(serde::Deserialize)]
    struct Event {
        #[serde(default)]
        usage: Option<crate::cost::UsageCounts>,
        #[serde(default)]
        message: Option<Holder>,
        #[serde(default)]
        response: Option<Holder>,
    }
    let event = serde_json::from_slice::<Event>(data).ok()?;
    let counts = event
        .usage
        .or(event.message.and_then(|m| m.usage))
        .or(event.response.and_then(|r| r.usage))?;
    Some(EventUsage::of(&counts))
}

/// OpenAI responses' `response.failed`: `{"response":{"error":{"code","message"}}}`.
fn response_error(data: &[u8]) -> Option<super::ApiError> {
    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    let response = value.get("response")?;
    super::ApiError::from_json(serde_json::to_string(response).ok()?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<(String, Vec<u8>, bool)> {
        let mut parser = SseParser::new().skipping_content();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, |e| {
                out.push((e.name().to_owned(), e.data().to_vec(), e.is_oversized()))
            });
        }
        out
    }

    const ANTHROPIC: &str = concat!(
        "\u{feff}event: message_start\r\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":10,\"cache_read_input_tokens\":500,\"output_tokens\":1}}}\r\n\r\n",
        ": a comment\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\rdata: {\"type\": \"ping\"}\r\r",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\n",
        "data: \"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn every_split_offset_gives_the_same_events() {
        let bytes = ANTHROPIC.as_bytes();
        let whole = events(&[bytes]);
        assert_eq!(whole.len(), 7);
        assert_eq!(whole[0].0, "message_start");
        assert!(whole[3].1.is_empty(), "a content event's data is skipped");
        let mut all = Vec::new();
        SseParser::new().feed(bytes, |e| all.push(e.data().to_vec()));
        assert!(all[3].ends_with(b"\"text\":\"Hello\"}}"));
        assert_eq!(whole[5].1, b"{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\n\"usage\":{\"output_tokens\":15}}");
        for split in 0..=bytes.len() {
            let (a, b) = bytes.split_at(split);
            assert_eq!(events(&[a, b]), whole, "split at {split}");
        }
        for first in 0..bytes.len() {
            // Every first offset, a spread of second ones (all pairs take seconds in debug).
            for second in (first..=bytes.len()).step_by(11) {
                let parts = [&bytes[..first], &bytes[first..second], &bytes[second..]];
                assert_eq!(events(&parts), whole, "split at {first} and {second}");
            }
        }
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(events(&one_by_one), whole);
    }

    #[test]
    fn anthropic_events_are_read() {
        let mut parser = SseParser::new();
        let mut read = Vec::new();
        parser.feed(ANTHROPIC.as_bytes(), |e| read.push(StreamEvent::read(&e)));
        assert_eq!(
            read[0],
            StreamEvent::Start(EventUsage {
                input_tokens: Some(35),
                output_tokens: Some(1)
            })
        );
        assert_eq!(
            read[5],
            StreamEvent::Progress(EventUsage {
                input_tokens: None,
                output_tokens: Some(15)
            })
        );
        assert_eq!(read[6], StreamEvent::Stop(EventUsage::default()));
        assert!(read[1..5].iter().all(|e| *e == StreamEvent::Other));
        let error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"boom\"}}\n\n";
        let mut got = None;
        SseParser::new().feed(error.as_bytes(), |e| got = Some(StreamEvent::read(&e)));
        let Some(StreamEvent::Error(e)) = got else {
            panic!("{got:?}")
        };
        assert_eq!(e.kind(), Some("api_error"));
    }

    #[test]
    fn openai_chunks_done_and_usage_are_read() {
        let stream = concat!(
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21}}\n\n",
            "data: [DONE]\n\n",
        );
        let mut read = Vec::new();
        SseParser::new().feed(stream.as_bytes(), |e| read.push(StreamEvent::read(&e)));
        assert_eq!(read[0], StreamEvent::ChatChunk(EventUsage::default()));
        assert_eq!(
            read[1],
            StreamEvent::ChatChunk(EventUsage {
                input_tokens: Some(9),
                output_tokens: Some(12)
            })
        );
        assert_eq!(read[2], StreamEvent::Stop(EventUsage::default()));
        let error = "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n";
        let mut got = None;
        SseParser::new().feed(error.as_bytes(), |e| got = Some(StreamEvent::read(&e)));
        assert!(matches!(got, Some(StreamEvent::Error(e)) if e.kind() == Some("server_error")));
    }

    #[test]
    fn memory_is_bounded_and_hostile_input_never_panics() {
        let mut parser = SseParser::with_max(16);
        let mut out = Vec::new();
        parser.feed(b"data: 0123456789abcdefghij\n\ndata: ok\n\n", |e| {
            out.push((e.data().to_vec(), e.is_oversized()))
        });
        assert_eq!(out, [(Vec::new(), true), (b"ok".to_vec(), false)]);
        let mut parser = SseParser::with_max(16);
        let mut out = Vec::new();
        for _ in 0..1000 {
            parser.feed(b"data: xxxxxxxxxxxxxxxxxxxxxxxxxxxxx", |_| {});
        }
        assert!(parser.line.len() <= 16);
        parser.feed(b"\n\n", |e| out.push(e.is_oversized()));
        assert_eq!(out, [true]);
        // Not JSON, unknown events, empty data: read as `Other`, no panic.
        let mut parser = SseParser::new();
        parser.feed(
            b"event: message_start\ndata: {\n\ndata\n\nevent:\n\n",
            |e| {
                let _ = StreamEvent::read(&e);
            },
        );
    }
}

//! Streaming answers of the simulated API (`"stream": true`), and the body type of every answer.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use serde_json::json;

use crate::BoxError;

/// How a streaming answer breaks ([`Fault::StreamBreak`](super::Fault::StreamBreak)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamBreak {
    /// An `event: error` with `overloaded_error` (a chat completions stream: a
    /// `data: {"error":{"type":"overloaded_error",…}}` chunk), then the end of the body.
    Overloaded,
    /// The same with `api_error`.
    ApiError,
    /// Nothing more is sent, and the connection stays open.
    Stall,
    /// The connection is dropped: the body fails with an [`std::io::Error`] of kind
    /// `ConnectionReset`.
    Disconnect,
    /// The body ends early without an error (a proxy that closes the connection cleanly): no
    /// `message_stop` / `[DONE]`.
    Truncate,
}

/// Tokens per `content_block_delta` of a simulated stream.
pub(crate) const TOKENS_PER_DELTA: u64 = 8;

/// Whether a request body asks for a stream (`"stream": true`).
pub(crate) fn wants_stream(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("stream")?.as_bool())
        .unwrap_or(false)
}

/// Whether a chat completions request asks for the final usage chunk
/// (`"stream_options": {"include_usage": true}`).
pub(crate) fn wants_usage(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("stream_options")?.get("include_usage")?.as_bool())
        .unwrap_or(false)
}

/// The wire format of an answer: the path the request was sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Anthropic Messages (`/v1/messages`): named events.
    Anthropic,
    /// OpenAI chat completions (`/v1/chat/completions`): `data:` chunks, `[DONE]`, the final
    /// usage chunk when the request asked for it.
    OpenAiChat {
        /// `stream_options.include_usage`.
        include_usage: bool,
    },
}

fn event(name: &str, data: serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn data(data: serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// How a stream ended, for the sim's counters and events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    Complete,
    /// An error event, with the status its kind stands for.
    ErrorEvent(http::StatusCode),
    Disconnected,
}

/// Settles the sim's accounting when a stream ends, with the output tokens it produced.
pub(crate) type Settle = Box<dyn FnOnce(u64, Ended) + Send + Sync>;

/// One step of a stream: wait, then send the bytes, `tokens` of output more produced.
struct Step {
    wait: Duration,
    data: Bytes,
    tokens: u64,
}

/// What a streamed answer is: its request, its length, how it breaks.
pub(crate) struct Answer<'a> {
    pub(crate) format: Format,
    pub(crate) seq: u64,
    pub(crate) model: &'a str,
    pub(crate) input_tokens: u64,
    pub(crate) max_tokens: u64,
    /// Output tokens it produces.
    pub(crate) produced: u64,
    /// The time to produce each output token.
    pub(crate) per_token: Duration,
    /// Broken after that many events, as the fault says.
    pub(crate) brk: Option<(StreamBreak, usize)>,
}

/// The event stream of `answer` in its format, the deltas paced by the per-token latency.
pub(crate) fn events(answer: Answer<'_>, settle: Settle) -> SimBody {
    let Answer {
        format,
        seq,
        model,
        input_tokens,
        max_tokens,
        produced,
        per_token,
        brk,
    } = answer;
    let now = |data| Step {
        wait: Duration::ZERO,
        data,
        tokens: 0,
    };
    let finished = produced >= max_tokens;
    let chat_id = format!("chatcmpl-sim{seq:08}");
    let chunk = |delta: serde_json::Value, finish: serde_json::Value, usage: bool| {
        let mut c = json!({"id": chat_id, "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if usage {
            c["usage"] = serde_json::Value::Null;
        }
        data(c)
    };
    let mut steps = VecDeque::new();
    match format {
        Format::Anthropic => {
            steps.push_back(now(event(
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": format!("msg_sim_{seq:08}"), "type": "message", "role": "assistant",
                    "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
            )));
            steps.push_back(now(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
            )));
            steps.push_back(now(event("ping", json!({"type": "ping"}))));
        }
        Format::OpenAiChat { include_usage } => steps.push_back(now(chunk(
            json!({"role": "assistant", "content": ""}),
            serde_json::Value::Null,
            include_usage,
        ))),
    }
    let mut left = produced;
    while left > 0 {
        let tokens = left.min(TOKENS_PER_DELTA);
        left -= tokens;
        let text = super::body::filler(usize::try_from(tokens * 4).unwrap_or(0));
        let delta = match format {
            Format::Anthropic => event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": text}}),
            ),
            Format::OpenAiChat { include_usage } => chunk(
                json!({"content": text}),
                serde_json::Value::Null,
                include_usage,
            ),
        };
        steps.push_back(Step {
            wait: per_token.saturating_mul(u32::try_from(tokens).unwrap_or(u32::MAX)),
            data: delta,
            tokens,
        });
    }
    match format {
        Format::Anthropic => {
            steps.push_back(now(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            )));
            let stop = if finished { "max_tokens" } else { "end_turn" };
            steps.push_back(now(event(
                "message_delta",
                json!({"type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": null},
                    "usage": {"output_tokens": produced}}),
            )));
            steps.push_back(now(event("message_stop", json!({"type": "message_stop"}))));
        }
        Format::OpenAiChat { include_usage } => {
            let stop = if finished { "length" } else { "stop" };
            steps.push_back(now(chunk(json!({}), json!(stop), include_usage)));
            if include_usage {
                steps.push_back(now(data(json!({"id": chat_id,
                    "object": "chat.completion.chunk", "model": model, "choices": [],
                    "usage": {"prompt_tokens": input_tokens, "completion_tokens": produced,
                        "total_tokens": input_tokens.saturating_add(produced)}}))));
            }
            steps.push_back(now(Bytes::from_static(b"data: [DONE]\n\n")));
        }
    }
    let mut tail = Tail::End;
    let mut ended = Ended::Complete;
    if let Some((brk, after)) = brk
        && after < steps.len()
    {
        steps.truncate(after);
        tail = match brk {
            StreamBreak::Overloaded | StreamBreak::ApiError => {
                let (kind, message, status) = if brk == StreamBreak::Overloaded {
                    ("overloaded_error", "Overloaded", 529)
                } else {
                    ("api_error", "Internal server error", 500)
                };
                ended = Ended::ErrorEvent(
                    http::StatusCode::from_u16(status)
                        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
                );
                steps.push_back(now(match format {
                    Format::Anthropic => event(
                        "error",
                        json!({"type": "error", "error": {"type": kind, "message": message}}),
                    ),
                    Format::OpenAiChat { .. } => data(json!({"error": {
                        "message": message, "type": kind, "param": null, "code": null}})),
                }));
                Tail::End
            }
            StreamBreak::Stall => Tail::Stall,
            StreamBreak::Disconnect => {
                ended = Ended::Disconnected;
                Tail::Disconnect
            }
            StreamBreak::Truncate => {
                ended = Ended::Disconnected;
                Tail::End
            }
        };
    }
    SimBody {
        inner: Kind::Events(Box::new(Events {
            steps,
            sleep: None,
            tail,
            ended,
            produced: 0,
            settle: Some(settle),
        })),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tail {
    End,
    Stall,
    Disconnect,
}

struct Events {
    steps: VecDeque<Step>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    tail: Tail,
    ended: Ended,
    produced: u64,
    settle: Option<Settle>,
}

impl Events {
    fn settle(&mut self) {
        if let Some(settle) = self.settle.take() {
            settle(self.produced, self.ended);
        }
    }
}

/// The body of every answer of the simulated API: the whole JSON answer, or — when the request
/// said `"stream": true` — an Anthropic event stream (an OpenAI chat completions stream for
/// `/v1/chat/completions`) whose deltas arrive as the tokens are produced (see the
/// [module docs](super#streaming)).
///
/// Dropping a stream before its end is the client disconnecting: the sim stops generating and
/// gives back the output it had reserved.
pub struct SimBody {
    inner: Kind,
}

enum Kind {
    Full(Full<Bytes>),
    Events(Box<Events>),
}

impl SimBody {
    pub(crate) fn full(body: Full<Bytes>) -> Self {
        SimBody {
            inner: Kind::Full(body),
        }
    }

    /// `true` for an event stream.
    pub fn is_stream(&self) -> bool {
        matches!(self.inner, Kind::Events(_))
    }
}

impl fmt::Debug for SimBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Kind::Full(_) => f.write_str("SimBody::Full"),
            Kind::Events(e) => f
                .debug_struct("SimBody::Events")
                .field("left", &e.steps.len())
                .field("produced", &e.produced)
                .finish(),
        }
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let events = match &mut self.inner {
            Kind::Full(full) => {
                return Pin::new(full)
                    .poll_frame(cx)
                    .map_err(|never| match never {});
            }
            Kind::Events(events) => events,
        };
        loop {
            if let Some(sleep) = events.sleep.as_mut() {
                std::task::ready!(sleep.as_mut().poll(cx));
                events.sleep = None;
            }
            let Some(step) = events.steps.front_mut() else {
                return match events.tail {
                    Tail::End => {
                        events.settle();
                        Poll::Ready(None)
                    }
                    Tail::Stall => Poll::Pending,
                    Tail::Disconnect => {
                        events.settle();
                        events.tail = Tail::End;
                        Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "connection reset by peer mid-stream (simulated)",
                        )))))
                    }
                };
            };
            if !step.wait.is_zero() {
                let wait = std::mem::take(&mut step.wait);
                events.sleep = Some(Box::pin(tokio::time::sleep(wait)));
                continue;
            }
            let Some(step) = events.steps.pop_front() else {
                continue;
            };
            events.produced += step.tokens;
            if events.steps.is_empty() && events.tail == Tail::End {
                // The last bytes are sent: the server is done with this answer.
                events.settle();
            }
            return Poll::Ready(Some(Ok(Frame::data(step.data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Kind::Full(full) => full.is_end_stream(),
            Kind::Events(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Kind::Full(full) => full.size_hint(),
            Kind::Events(_) => SizeHint::default(),
        }
    }
}

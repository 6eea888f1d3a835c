//! The built-in estimator for Anthropic Messages and OpenAI chat / responses JSON bodies.

use serde_json::Value;

use super::DEFAULT_BYTES_PER_TOKEN;

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
pub fn inspect_json(body: &[u8]) -> Option<BodyInfo> {
    inspect_with(body, DEFAULT_BYTES_PER_TOKEN)
}

pub(super) fn inspect_with(body: &[u8], bytes_per_token: f64) -> Option<BodyInfo> {
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
    let text_tokens = (count.text_bytes as f64 / bytes_per_token).ceil() as u64;
    Some(BodyInfo {
        model,
        input_tokens: text_tokens.saturating_add(count.fixed),
        max_tokens,
    })
}

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
                    "image" | "image_url" | "input_image" | "document" | "input_file" | "file"
                ) {
                    self.fixed += IMAGE_TOKENS;
                    return;
                }
                for (k, v) in map {
                    // Structural fields are not billed as text.
                    if !matches!(
                        k.as_str(),
                        "type" | "role" | "id" | "tool_use_id" | "call_id" | "cache_control"
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}

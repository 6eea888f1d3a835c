//! A provider's JSON error body, parsed: [`ApiError`].

/// A provider's JSON error, e.g. Anthropic's
/// `{"type":"error","error":{"type":"rate_limit_error","message":"…"},"request_id":"…"}`,
/// OpenAI's `{"error":{"type":…,"code":…,"message":…}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiError {
    kind: Option<String>,
    message: Option<String>,
    code: Option<String>,
    request_id: Option<String>,
}

impl ApiError {
    /// Parses a provider's JSON error body. `None` when the bytes are not a recognisable error.
    ///
    /// Reads Anthropic's `{"type":"error","error":{"type","message","details":{"error_code"}},
    /// "request_id"}` and OpenAI's `{"error":{"message","type","code"}}`; a numeric `code` is
    /// kept as its decimal text. Bodies that are not JSON, or whose `error` is missing or not an
    /// object, give `None`.
    ///
    /// ```
    /// use tower_llm_limits::signals::ApiError;
    ///
    /// let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down",
    ///     "details":{"error_code":"enforced_spend_limit_reached"}},"request_id":"req_1"}"#;
    /// let error = ApiError::from_json(body).unwrap();
    /// assert_eq!(error.kind(), Some("rate_limit_error"));
    /// assert_eq!(error.code(), Some("enforced_spend_limit_reached"));
    /// assert_eq!(error.request_id(), Some("req_1"));
    /// assert!(ApiError::from_json(b"<html>502 Bad Gateway</html>").is_none());
    /// ```
    pub fn from_json(body: &[u8]) -> Option<Self> {
        use serde_json::Value;
        let root: Value = serde_json::from_slice(body).ok()?;
        let error = root.get("error")?.as_object()?;
        let text = |v: Option<&Value>| match v? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let code = text(error.get("details").and_then(|d| d.get("error_code")))
            .or_else(|| text(error.get("code")));
        Some(ApiError {
            kind: text(error.get("type")),
            message: text(error.get("message")),
            code,
            request_id: text(root.get("request_id")),
        })
    }

    /// `error.type`, e.g. `rate_limit_error`, `overloaded_error`, `invalid_request_error`.
    pub fn kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }

    /// `error.message`.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// A machine-readable code: Anthropic `error.details.error_code`
    /// (e.g. `enforced_spend_limit_reached`), OpenAI `error.code`.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// `request_id` from the body.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The HTTP status a provider answers this kind of error with, for an error that arrived
    /// inside a `200` event stream: Anthropic's table (`invalid_request_error` 400,
    /// `authentication_error` 401, `billing_error` 402, `permission_error` 403,
    /// `not_found_error` 404, `request_too_large` 413, `rate_limit_error` 429, `api_error` 500,
    /// `timeout_error` 504, `overloaded_error` 529) and OpenAI's names for the same
    /// (`rate_limit_exceeded`, `insufficient_quota` 429; `server_error` 500); 500 for any other
    /// kind or none.
    ///
    /// ```
    /// use tower_llm_limits::signals::ApiError;
    ///
    /// let event = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    /// assert_eq!(ApiError::from_json(event).unwrap().status().as_u16(), 529);
    /// ```
    pub fn status(&self) -> http::StatusCode {
        let code = match self.kind() {
            Some("invalid_request_error") => 400,
            Some("authentication_error") => 401,
            Some("billing_error") => 402,
            Some("permission_error") => 403,
            Some("not_found_error") => 404,
            Some("request_too_large") => 413,
            Some("rate_limit_error" | "rate_limit_exceeded" | "insufficient_quota") => 429,
            Some("timeout_error") => 504,
            Some("overloaded_error") => 529,
            _ => 500,
        };
        http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
    }
}

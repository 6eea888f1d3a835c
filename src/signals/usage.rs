//! Watching a successful answer's body for its `usage` as it passes to the caller.

use crate::cost::{Usage, UsageReport};

/// The most of a body kept to read its `usage` from. A Messages answer of 64k output tokens is
/// about 300 KB of JSON; larger bodies are passed on unwatched and their reservation stays as
/// the answer's head settled it.
pub(crate) const MAX_WATCHED_BODY: usize = 1024 * 1024;

/// A copy of a JSON answer's bytes as they pass (nothing is held back from the caller), parsed
/// for its `usage` once the body ends; reported to the rate limiter's [`UsageReport`].
pub(crate) struct UsageWatch {
    report: UsageReport,
    bytes: Vec<u8>,
    gave_up: bool,
}

impl std::fmt::Debug for UsageWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageWatch")
            .field("bytes", &self.bytes.len())
            .field("gave_up", &self.gave_up)
            .finish()
    }
}

impl UsageWatch {
    pub(crate) fn new(report: UsageReport) -> Self {
        UsageWatch {
            report,
            bytes: Vec::new(),
            gave_up: false,
        }
    }

    /// Bytes passed to the caller.
    pub(crate) fn feed(&mut self, data: &[u8]) {
        if self.gave_up {
            return;
        }
        if self.bytes.len() + data.len() > MAX_WATCHED_BODY {
            self.gave_up = true;
            self.bytes = Vec::new();
            return;
        }
        self.bytes.extend_from_slice(data);
    }

    /// The body ended: report its usage, if it has one.
    pub(crate) fn finish(self) {
        if self.gave_up {
            return;
        }
        if let Some(usage) = Usage::from_json(&self.bytes) {
            self.report.report(usage);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn reports_usage_split_across_chunks_and_gives_up_on_huge_bodies() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let report = {
            let seen = seen.clone();
            UsageReport::new(move |u| seen.lock().unwrap().push(u))
        };
        let body = br#"{"content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":7,"output_tokens":3}}"#;
        for split in 0..body.len() {
            let mut w = UsageWatch::new(report.clone());
            w.feed(&body[..split]);
            w.feed(&body[split..]);
            w.finish();
        }
        assert_eq!(seen.lock().unwrap().len(), body.len());
        assert!(seen.lock().unwrap().iter().all(|u| *u == Usage::new(7, 3)));
        let mut w = UsageWatch::new(report);
        w.feed(&vec![b' '; MAX_WATCHED_BODY]);
        w.feed(body);
        w.finish();
        assert_eq!(
            seen.lock().unwrap().len(),
            body.len(),
            "a huge body is not watched"
        );
    }
}

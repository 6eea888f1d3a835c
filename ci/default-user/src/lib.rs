//! Empty: this crate exists for its test, `tests/default_features.rs` of tower-llm-limits,
//! compiled against the crate with default features.

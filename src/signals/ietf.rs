//! IETF `RateLimit` / `RateLimit-Policy` fields (draft-ietf-httpapi-ratelimit-headers).
//!
//! **Structured form (draft -10).** Both fields are Structured Field Lists:
//! `RateLimit-Policy: "burst";q=100;w=60,"daily";q=1000;w=86400` names each policy with its
//! quota `q`, window `w` (seconds) and quota unit `qu`; `RateLimit: "burst";r=50;t=30` gives what
//! remains (`r`) of a policy and the seconds until it is available again (`t`). A `RateLimit`
//! item is joined to the policy of the same name; without one it counts requests and has no
//! known quota. The unit maps to a [`Dimension`]: `requests` (the default) to
//! [`Dimension::Requests`]; `tokens`, `input-tokens`, `output-tokens` (and their `_` and
//! `prompt`/`completion` spellings) to the token dimensions; other units (`content-bytes`,
//! `concurrent-requests`, …) are ignored.
//!
//! **Several policies for one dimension: the most restrictive wins.** It is the one with the
//! least budget left (`r`, or the quota `q` when the server did not say what remains); on a tie,
//! the one that resets later; then the one with the smaller quota. That is the policy a client
//! runs into first.
//!
//! A line that is not a valid Structured Field List is ignored as a whole (with a debug event),
//! as is an item with a parameter of the wrong type or a negative value. The fields are parsed
//! without allocating (sfv's visitor interface); at most 8 items per field are considered.
//!
//! **Legacy form (up to draft -06).** `RateLimit-Limit: 10`, `RateLimit-Remaining: 1`,
//! `RateLimit-Reset: 7` (delay-seconds; an integer at or above 1 000 000 000 is read as Unix
//! epoch seconds, which some servers send). `RateLimit-Limit` may carry its policies
//! (`10, 10;w=1`), and a legacy `RateLimit-Policy: 10;w=1, 50;w=60` gives the window of the quota
//! equal to the limit. The limit counts requests.

use std::borrow::Cow;
use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use http::header::GetAll;
use http::{HeaderMap, HeaderValue};
use sfv::visitor::{
    EntryVisitor, Ignored, InnerListVisitor, ItemVisitor, ListVisitor, ParameterVisitor,
};
use sfv::{BareItemFromInput, KeyRef, StringRef, TokenRef};

use super::headers::{LIMIT, REMAINING, RESET, Raw};
use super::parse::{self, read};
use super::{BucketReading, Dialect, Dimension, RateLimitSnapshot};

const MAX_ENTRIES: usize = 8;

/// The bare item of a list entry: a policy name, or a quota in the legacy form.
#[derive(Default)]
enum Name<'de> {
    #[default]
    Other,
    Text(Cow<'de, StringRef>),
    Token(&'de TokenRef),
    Int(i64),
}

impl Name<'_> {
    fn text(&self) -> Option<&str> {
        match self {
            Name::Text(s) => Some(s.as_str()),
            Name::Token(t) => Some(t.as_str()),
            _ => None,
        }
    }
}

/// A parameter: absent, a valid value, or present with a wrong type or value (`Err`).
type Param<T> = Option<Result<T, ()>>;

#[derive(Default)]
struct Entry<'de> {
    name: Name<'de>,
    q: Param<u64>,
    w: Param<u64>,
    r: Param<u64>,
    t: Param<u64>,
    unit: Param<Option<Dimension>>,
    inner_list: bool,
}

impl Entry<'_> {
    fn is_valid(&self) -> bool {
        let ok = |p: &Param<u64>| !matches!(p, Some(Err(())));
        !self.inner_list
            && ok(&self.q)
            && ok(&self.w)
            && ok(&self.r)
            && ok(&self.t)
            && !matches!(self.unit, Some(Err(())))
    }

    fn get(p: &Param<u64>) -> Option<u64> {
        p.and_then(Result::ok)
    }

    /// The dimension this policy counts; `None` for units that map to none.
    fn dimension(&self) -> Option<Dimension> {
        match self.unit {
            None => Some(Dimension::Requests),
            Some(Ok(d)) => d,
            Some(Err(())) => None,
        }
    }
}

fn non_negative(v: &BareItemFromInput<'_>) -> Result<u64, ()> {
    v.as_integer()
        .and_then(|i| u64::try_from(i64::from(i)).ok())
        .ok_or(())
}

fn unit(v: &BareItemFromInput<'_>) -> Result<Option<Dimension>, ()> {
    let s = match v {
        BareItemFromInput::String(s) => s.as_str(),
        BareItemFromInput::Token(t) => t.as_str(),
        _ => return Err(()),
    };
    Ok(match s {
        "requests" | "request" => Some(Dimension::Requests),
        "tokens" | "token" => Some(Dimension::Tokens),
        "input-tokens" | "input_tokens" | "prompt-tokens" | "prompt_tokens" => {
            Some(Dimension::InputTokens)
        }
        "output-tokens" | "output_tokens" | "completion-tokens" | "completion_tokens" => {
            Some(Dimension::OutputTokens)
        }
        _ => None,
    })
}

impl<'de> ParameterVisitor<'de> for &mut Entry<'de> {
    type Out = ();
    type Error = Infallible;

    fn parameter(
        &mut self,
        key: &'de KeyRef,
        value: BareItemFromInput<'de>,
    ) -> Result<(), Infallible> {
        // Repeated keys: the last one counts (RFC 9651).
        match key.as_str() {
            "q" => self.q = Some(non_negative(&value)),
            "w" => self.w = Some(non_negative(&value)),
            "r" => self.r = Some(non_negative(&value)),
            "t" => self.t = Some(non_negative(&value)),
            "qu" => self.unit = Some(unit(&value)),
            _ => {}
        }
        Ok(())
    }

    fn finish(self) -> Result<(), Infallible> {
        Ok(())
    }
}

impl<'de> ItemVisitor<'de> for &mut Entry<'de> {
    type Out = ();
    type Error = Infallible;

    fn bare_item(
        self,
        bare_item: BareItemFromInput<'de>,
    ) -> Result<impl ParameterVisitor<'de, Out = ()>, Infallible> {
        self.name = match bare_item {
            BareItemFromInput::String(s) => Name::Text(s),
            BareItemFromInput::Token(t) => Name::Token(t),
            BareItemFromInput::Integer(i) => Name::Int(i64::from(i)),
            _ => Name::Other,
        };
        Ok(self)
    }
}

impl<'de> EntryVisitor<'de> for &mut Entry<'de> {
    type Error = Infallible;

    fn item(self) -> Result<impl ItemVisitor<'de>, Infallible> {
        Ok(self)
    }

    fn inner_list(self) -> Result<impl InnerListVisitor<'de>, Infallible> {
        self.inner_list = true;
        Ok(Ignored)
    }
}

/// The entries of one field (all its lines), in a fixed-size array.
struct Entries<'de> {
    items: [Entry<'de>; MAX_ENTRIES],
    len: usize,
}

impl Default for Entries<'_> {
    fn default() -> Self {
        Entries {
            items: std::array::from_fn(|_| Entry::default()),
            len: 0,
        }
    }
}

impl<'de> ListVisitor<'de> for Entries<'de> {
    type Out = Self;
    type Error = Infallible;

    fn entry(&mut self) -> Result<impl EntryVisitor<'de>, Infallible> {
        Ok(if self.len < MAX_ENTRIES {
            self.len += 1;
            Some(&mut self.items[self.len - 1])
        } else {
            None
        })
    }

    fn finish(self) -> Result<Self, Infallible> {
        Ok(self)
    }
}

impl<'de> Entries<'de> {
    /// Parses every line of a field; a line that does not parse is ignored (and logged).
    fn parse(lines: GetAll<'de, HeaderValue>, name: &'static str) -> Self {
        let mut all = Entries::default();
        for line in lines {
            match sfv::Parser::new(line.as_bytes()).parse_list_with_visitor(Entries::default()) {
                Ok(parsed) => {
                    for entry in parsed.into_iter() {
                        if all.len < MAX_ENTRIES {
                            all.items[all.len] = entry;
                            all.len += 1;
                        }
                    }
                }
                Err(_) => tracing::debug!(header = name, "ignoring unreadable header"),
            }
        }
        all
    }

    fn into_iter(self) -> impl Iterator<Item = Entry<'de>> {
        self.items.into_iter().take(self.len)
    }

    fn iter(&self) -> impl Iterator<Item = &Entry<'de>> {
        self.items[..self.len].iter()
    }
}

/// `true` when `a` is more restrictive than `b` (see the module docs).
fn more_restrictive(a: &BucketReading, b: &BucketReading) -> bool {
    let left = |r: &BucketReading| r.remaining().or(r.limit()).unwrap_or(u64::MAX);
    let reset = |r: &BucketReading| r.reset().unwrap_or(Duration::ZERO);
    let limit = |r: &BucketReading| r.limit().unwrap_or(u64::MAX);
    (left(a), std::cmp::Reverse(reset(a)), limit(a))
        < (left(b), std::cmp::Reverse(reset(b)), limit(b))
}

fn keep(best: &mut Option<BucketReading>, candidate: BucketReading) {
    match best {
        Some(b) if !more_restrictive(&candidate, b) => {}
        _ => *best = Some(candidate),
    }
}

fn reading(q: Option<u64>, w: Option<u64>, r: Option<u64>, t: Option<u64>) -> BucketReading {
    let reading = BucketReading::new(q, r, t.and_then(|t| parse::secs_f64(t as f64)));
    match w.and_then(|w| parse::secs_f64(w as f64)) {
        Some(w) => reading.with_window(w),
        None => reading,
    }
}

pub(super) fn read_structured(
    headers: &HeaderMap,
    raw: &Raw<'_>,
    snapshot: &mut RateLimitSnapshot,
) {
    if !raw.structured && !raw.policy {
        return;
    }
    let policies = if raw.policy {
        Entries::parse(headers.get_all("ratelimit-policy"), "ratelimit-policy")
    } else {
        Entries::default()
    };
    let limits = if raw.structured {
        Entries::parse(headers.get_all("ratelimit"), "ratelimit")
    } else {
        Entries::default()
    };
    let named = |e: &&Entry<'_>| e.is_valid() && e.name.text().is_some();
    let mut best: [Option<BucketReading>; 4] = [None; 4];
    for item in limits.iter().filter(named) {
        let policy = policies
            .iter()
            .filter(named)
            .find(|p| p.name.text() == item.name.text());
        let dimension = match policy {
            Some(p) => p.dimension(),
            None => Some(Dimension::Requests),
        };
        let Some(dimension) = dimension else { continue };
        let (q, w) = policy.map_or((None, None), |p| (Entry::get(&p.q), Entry::get(&p.w)));
        let r = reading(q, w, Entry::get(&item.r), Entry::get(&item.t));
        keep(&mut best[dimension.index()], r);
    }
    for policy in policies.iter().filter(named) {
        let reported = limits
            .iter()
            .filter(named)
            .any(|i| i.name.text() == policy.name.text());
        if reported {
            continue;
        }
        if let Some(dimension) = policy.dimension() {
            let r = reading(Entry::get(&policy.q), Entry::get(&policy.w), None, None);
            keep(&mut best[dimension.index()], r);
        }
    }
    for (dimension, reading) in Dimension::ALL.into_iter().zip(best) {
        if let Some(reading) = reading {
            snapshot.offer(Dialect::IetfStructured, dimension, reading);
        }
    }
}

pub(super) fn read_legacy(
    headers: &HeaderMap,
    raw: &Raw<'_>,
    reference: SystemTime,
    snapshot: &mut RateLimitSnapshot,
) {
    let slots = &raw.legacy;
    if slots.iter().all(Option::is_none) {
        return;
    }
    // `RateLimit-Limit: 10` or `RateLimit-Limit: 10, 10;w=1, 50;w=60`.
    let own_policies = headers.get("ratelimit-limit").map(|v| {
        sfv::Parser::new(v.as_bytes())
            .parse_list_with_visitor(Entries::default())
            .unwrap_or_default()
    });
    let limit = slots[LIMIT].and_then(|(n, v)| {
        read(n.as_str(), v, |s| {
            parse::uint(s.split([',', ';']).next().unwrap_or(s).trim())
        })
    });
    let remaining = slots[REMAINING].and_then(|(n, v)| parse::read_uint(n.as_str(), v));
    let reset = slots[RESET]
        .and_then(|(n, v)| read(n.as_str(), v, |s| parse::relative_or_epoch(s, reference)));
    if limit.is_none() && remaining.is_none() && reset.is_none() {
        return;
    }
    let mut reading = BucketReading::new(limit, remaining, reset);
    if let Some(limit) = limit {
        let policies = if raw.policy {
            Entries::parse(headers.get_all("ratelimit-policy"), "ratelimit-policy")
        } else {
            Entries::default()
        };
        let window = own_policies
            .iter()
            .flat_map(Entries::iter)
            .chain(policies.iter())
            .filter(|e| {
                e.is_valid() && matches!(e.name, Name::Int(q) if u64::try_from(q) == Ok(limit))
            })
            .find_map(|e| Entry::get(&e.w))
            .and_then(|w| parse::secs_f64(w as f64));
        if let Some(w) = window {
            reading = reading.with_window(w);
        }
    }
    snapshot.offer(Dialect::IetfLegacy, Dimension::Requests, reading);
}

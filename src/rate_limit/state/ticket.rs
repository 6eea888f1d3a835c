//! A request's place in the limiter, from queueing to its response.

use super::*;

/// A request's place in the limiter: queued, admitted, in flight. Dropping it gives back what it
/// holds (see the module docs on cancellation).
pub(crate) struct Ticket {
    pub(super) cell: Arc<KeyCell>,
    pub(super) phase: Phase,
    /// What the request's [`UsageReport`] (handed out before dispatch) shares with it.
    pub(super) reported: Option<Arc<Reported>>,
}

/// What a request's [`UsageReport`] shares with its ticket.
#[derive(Default)]
pub(super) struct Reported {
    /// The request's dispatch position (0 until dispatched).
    seq: AtomicU64,
    /// Input reported alone before the head was answered (a stream's `message_start` is read
    /// before its head goes on), for [`Ticket::complete_with`] to settle. Written and read
    /// under the key's lock.
    input: Mutex<Option<u64>>,
}

pub(super) enum Phase {
    Queued {
        id: (usize, u64),
        charge: Charge,
        raw: u64,
        exact: bool,
        since: Instant,
        deadline: Option<Instant>,
        max_wait: Option<Duration>,
        /// What it waits for (a dimension, `cooldown`, `probe`), for traces and metrics.
        reason: &'static str,
    },
    Admitted(Record),
    Dispatched(Record),
    Done,
}

pub(crate) enum Admission {
    /// Admitted: call the service.
    Admitted,
    /// Wait: sleep until the instant (if any) or until woken.
    Wait(Option<Instant>),
    /// Failed (cost never fits, or the deadline passed).
    Failed(BoxError),
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::Queued { .. } => "queued",
            Phase::Admitted(_) => "admitted",
            Phase::Dispatched(_) => "dispatched",
            Phase::Done => "done",
        };
        f.debug_struct("Ticket")
            .field("key", &self.cell.key)
            .field("phase", &phase)
            .finish()
    }
}

impl Ticket {
    pub(crate) fn is_admitted(&self) -> bool {
        matches!(self.phase, Phase::Admitted(_))
    }

    /// Tries to admit a queued request; registers `waker` otherwise.
    pub(crate) fn poll_admit(&mut self, waker: &Waker) -> Admission {
        let Phase::Queued {
            id,
            charge,
            raw,
            exact,
            since,
            deadline,
            max_wait,
            reason,
        } = self.phase
        else {
            return Admission::Admitted;
        };
        let now = Instant::now();
        let mut st = lock(&self.cell.state);
        st.adopt(&self.cell.key, now);
        st.accrue_others(now);
        let head = st.queue.keys().next() == Some(&id);
        let check = if head {
            st.check(&charge, now)
        } else {
            Check::Wake
        };
        let fail = |st: &mut KeyState, e: BoxError| {
            st.dequeue(id);
            Admission::Failed(e)
        };
        match check {
            Check::Fits => {
                st.dequeue(id);
                let record = st.admit(charge, raw, exact, now);
                drop(st);
                let waited = now.saturating_duration_since(since);
                tracing::debug!(key = %self.cell.key, dimension = reason,
                    waited_ms = waited.as_millis() as u64, "rate limit: admitted after waiting");
                crate::observe::emit::rate_limit_waited(&self.cell.key, reason, waited);
                self.phase = Phase::Admitted(record);
                Admission::Admitted
            }
            Check::Never(e) => {
                let r = fail(&mut st, cost_exceeds(&self.cell.key, e));
                drop(st);
                self.phase = Phase::Done;
                r
            }
            Check::Until(..) | Check::Wake => {
                if let (Some(deadline), Some(max)) = (deadline, max_wait)
                    && now >= deadline
                {
                    let (at, dim) = if head {
                        st.ready_at(&charge, None, now)
                    } else {
                        st.project(&charge, id.0, now)
                    };
                    let wait = at.saturating_duration_since(since).max(max);
                    tracing::info!(key = %self.cell.key, dimension = st.reason(dim),
                        wait_ms = wait.as_millis() as u64, max_wait_ms = max.as_millis() as u64,
                        "rate limit: refused, projected wait exceeds the maximum");
                    crate::observe::emit::rate_limit_refused(&self.cell.key, "wait_too_long");
                    let r = fail(&mut st, WaitTooLong::new(dim, wait, max).into());
                    drop(st);
                    self.phase = Phase::Done;
                    return r;
                }
                if let Some(w) = st.queue.get_mut(&id) {
                    match &mut w.waker {
                        Some(old) => old.clone_from(waker),
                        slot => *slot = Some(waker.clone()),
                    }
                }
                let until = match check {
                    Check::Until(at) => Some(at),
                    _ => None,
                };
                Admission::Wait(match (until, deadline) {
                    (Some(a), Some(d)) => Some(a.min(d)),
                    (a, d) => a.or(d),
                })
            }
        }
    }

    /// The inner call started: from now on the server may have seen the request.
    pub(crate) fn dispatched(&mut self) {
        if let Phase::Admitted(mut r) = self.phase {
            // Sent now, not when admitted: a concurrency cap below may have held it since.
            r.at = Instant::now();
            lock(&self.cell.state).sent(&r, r.at);
            if let Some(reported) = &self.reported {
                reported.seq.store(r.seq, Ordering::Relaxed);
            }
            self.phase = Phase::Dispatched(r);
        }
    }

    /// Where a body-reading layer below reports this request's usage once its answer's body
    /// has passed: it settles what the head left and teaches the key how the server counts.
    /// The input reported alone (a stream's `message_start`) settles the input at once: when
    /// the head has been answered, else with the head.
    pub(crate) fn usage_report(&mut self) -> UsageReport {
        let reported = self.reported.get_or_insert_with(Default::default).clone();
        let early = reported.clone();
        let cell = self.cell.clone();
        let input_cell = self.cell.clone();
        UsageReport::new(move |usage| {
            let seq = reported.seq.load(Ordering::Relaxed);
            if seq != 0 {
                cell.usage(seq, usage);
            }
        })
        .with_input(move |input| {
            let seq = early.seq.load(Ordering::Relaxed);
            if seq != 0 {
                input_cell.input_usage(seq, input, &early.input);
            }
        })
    }

    /// The inner call answered: learn from the response. Returns the cooldown to announce.
    pub(crate) fn complete(
        &mut self,
        signals: &ResponseSignals,
        usage: Option<Usage>,
        streaming: bool,
    ) -> Option<Instant> {
        self.complete_with(Reply {
            snapshot: signals.rate_limits(),
            outcome: signals.outcome(),
            received: signals.received_at(),
            usage,
            input: None,
            streaming,
        })
    }

    pub(super) fn complete_with(&mut self, reply: Reply<'_>) -> Option<Instant> {
        let Phase::Dispatched(record) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return None;
        };
        let kind = reply.outcome.kind();
        let mut st = lock(&self.cell.state);
        // Under the key's lock, as the report writes it.
        let input = self.reported.as_ref().and_then(|r| lock(&r.input).take());
        let absorbed = st.complete(
            &self.cell.key,
            &record,
            Reply {
                input: input.or(reply.input),
                ..reply
            },
        );
        drop(st);
        // Outside the key's lock.
        crate::observe::emit::rate_limit_response(&self.cell.key, kind.as_str());
        if let Some(until) = absorbed {
            crate::observe::emit::rate_limit_cooldown(
                &self.cell.key,
                until.saturating_duration_since(Instant::now()),
            );
        }
        absorbed
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        let now = Instant::now();
        match phase {
            Phase::Queued { id, .. } => lock(&self.cell.state).dequeue(id),
            Phase::Admitted(r) => lock(&self.cell.state).unadmit(&r, now),
            Phase::Dispatched(r) => lock(&self.cell.state).release_output(&r, now),
            Phase::Done => {}
        }
    }
}

//! The issued credentials of a supervised run (database users, certificates): each lease is
//! renewed at two thirds of its duration while a child uses it; one that cannot be renewed (not
//! renewable, a certificate, its maximum near, refused) is flagged for replacement, which the
//! policy turns into a reload; one no child uses any more is revoked. Renewals and revocations
//! run beside the supervisor's other work, each with its own deadline; a failure is logged and
//! audited and never touches the child's exit code.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::audit::{Event, LeaseEvent, LeaseRecord};
use crate::backend::{Handle, Lease, LeaseId};
use crate::resolve::{Issued, Kept};
use crate::secret::{ErrorKind, SecretError};

/// Each renewal or revocation gives up after this long.
const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// A renewal that grants less than this share of what was asked means the maximum is near.
const SHORT_GRANT: f64 = 0.9;

/// What the supervisor must act on.
#[derive(Debug)]
pub enum Note {
    /// Replace this credential: reload.
    Expiring(u64),
    Audit(Event),
}

#[derive(Debug)]
enum Phase {
    /// Renewed when due (or, when it cannot be, flagged for replacement then).
    Live,
    /// Flagged for replacement; told again until it is released.
    Replacing,
}

#[derive(Debug)]
struct Held {
    issued: Issued,
    phase: Phase,
    /// The duration first granted: what each renewal asks for.
    wanted: Duration,
    /// When to act next; `None` while a renewal runs.
    next: Option<SystemTime>,
    failures: u32,
    expired_told: bool,
    /// When to look next whether the token that issued it was replaced.
    token_check: Option<SystemTime>,
}

impl Held {
    fn record(&self) -> LeaseRecord {
        record(&self.issued)
    }

    /// `Some(true)` once a new login replaced the token that issued it: Vault revokes the
    /// lease when that token ends, whatever the lease's own TTL, so it is replaced now.
    fn token_replaced(&self) -> Option<bool> {
        let (login, _) = self.issued.lease.bound?;
        let current = self.issued.handle.backend.token_end();
        Some(current.is_none_or(|(now, _)| now != login))
    }

    /// When next to look whether its token was replaced: a quarter of the current token's
    /// remaining life from now (secret-run logs in again at two thirds of it), at least 1 s.
    fn token_wake(&self, now: SystemTime) -> Option<SystemTime> {
        self.issued.lease.bound?;
        let (_, end) = self.issued.handle.backend.token_end()?;
        let left = end.duration_since(now).unwrap_or_default();
        Some(now + (left / 4).max(Duration::from_secs(1)))
    }

    /// When it next needs something.
    fn due(&self) -> Option<SystemTime> {
        let token = match self.phase {
            Phase::Live => self.token_check,
            Phase::Replacing => None,
        };
        [self.next, token].into_iter().flatten().min()
    }
}

fn record(issued: &Issued) -> LeaseRecord {
    LeaseRecord {
        lease: label(&issued.lease, &issued.request.path),
        backend: issued.backend.clone(),
        path: issued.request.path.clone(),
    }
}

/// The variables of each issued credential, for the audit.
pub fn vars_of(vars: &[crate::resolve::ResolvedVar]) -> BTreeMap<u64, Vec<String>> {
    let mut map: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for v in vars {
        if let Some(tag) = v.lease {
            map.entry(tag).or_default().push(v.name.to_string());
        }
    }
    map
}

/// The audit record of an issued credential and the variables it gave.
pub fn issue_event(i: &Issued, vars: &BTreeMap<u64, Vec<String>>) -> Event {
    Event::Lease {
        what: LeaseEvent::Issue {
            ttl_s: i.lease.duration().as_secs(),
            renewable: i.lease.renewable,
            vars: vars.get(&i.tag).cloned().unwrap_or_default(),
        },
        lease: record(i),
    }
}

/// How logs and the audit name a credential.
pub fn label(lease: &Lease, path: &str) -> String {
    match &lease.id {
        Some(id) => id.shown(),
        None => format!("{path} (certificate)"),
    }
}

type Work = Pin<Box<dyn Future<Output = Done>>>;

#[derive(Debug)]
enum Done {
    Renewed {
        tag: u64,
        result: Result<Duration, SecretError>,
    },
    Revoked {
        record: LeaseRecord,
        result: Result<(), SecretError>,
    },
}

#[derive(Default)]
pub struct Leases {
    held: BTreeMap<u64, Held>,
    work: FuturesUnordered<Work>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("held", &self.held.keys().collect::<Vec<_>>())
            .field("in_flight", &self.work.len())
            .finish()
    }
}

impl Leases {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.work.is_empty()
    }

    /// Takes charge of newly issued credentials; `vars` names the variables of each.
    pub fn add(&mut self, issued: Vec<Issued>, vars: &BTreeMap<u64, Vec<String>>) -> Vec<Note> {
        let mut notes = Vec::new();
        for i in issued {
            let lease = &i.lease;
            tracing::info!(lease = %label(lease, &i.request.path), backend = %i.backend, "issued: {}", lease.about());
            notes.push(Note::Audit(issue_event(&i, vars)));
            let mut held = Held {
                wanted: lease.duration(),
                next: Some(lease.act_at()),
                phase: Phase::Live,
                failures: 0,
                expired_told: false,
                token_check: None,
                issued: i,
            };
            held.token_check = held.token_wake(SystemTime::now());
            self.held.insert(held.issued.tag, held);
        }
        notes
    }

    /// The credentials a reload keeps (alive and not being replaced).
    pub fn kept(&self) -> Kept {
        let mut kept = Kept::none();
        for h in self.held.values() {
            if matches!(h.phase, Phase::Live) {
                let i = &h.issued;
                kept.held.insert(
                    (i.backend.clone(), i.request.clone()),
                    (i.tag, i.fetched.copy()),
                );
            }
        }
        kept
    }

    /// The names of the credentials `tags`, for the audit.
    pub fn labels(&self, tags: impl IntoIterator<Item = u64>) -> Vec<String> {
        tags.into_iter()
            .filter_map(|t| self.held.get(&t).map(|h| h.record().lease))
            .collect()
    }

    /// When something next falls due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let now = SystemTime::now();
        self.held
            .values()
            .filter_map(Held::due)
            .min()
            .map(|at| Instant::now() + at.duration_since(now).unwrap_or_default())
    }

    /// Starts what has fallen due: renewals, replacements, notices of an end passed.
    pub fn tick(&mut self) -> Vec<Note> {
        let now = SystemTime::now();
        let mut notes = Vec::new();
        for (tag, h) in &mut self.held {
            if matches!(h.phase, Phase::Live) && h.token_check.is_some_and(|at| at <= now) {
                if h.token_replaced() == Some(true) {
                    notes.extend(h.replace(*tag, "token-replaced", now));
                    continue;
                }
                h.token_check = h.token_wake(now);
            }
            if h.next.is_none_or(|at| at > now) {
                continue;
            }
            let lease = h.issued.lease.clone();
            if now >= lease.ends && !h.expired_told {
                h.expired_told = true;
                tracing::error!(
                    lease = %h.record().lease,
                    "an issued credential ended without being replaced; the child keeps running on it (max_stale decides about restarts)"
                );
                notes.push(Note::Audit(Event::Lease {
                    what: LeaseEvent::Expired,
                    lease: h.record(),
                }));
            }
            match (&h.phase, lease.id) {
                (Phase::Live, Some(id)) if lease.renewable && now < lease.ends => {
                    h.next = None;
                    self.work
                        .push(renewal(*tag, h.issued.handle.clone(), id, h.wanted));
                }
                (Phase::Live, id) => {
                    let reason = if id.is_none() {
                        "certificate"
                    } else {
                        "not-renewable"
                    };
                    notes.extend(h.replace(*tag, reason, now));
                }
                (Phase::Replacing, _) => {
                    // The reload that replaces it failed or has not come yet: ask again.
                    h.failures += 1;
                    h.next = Some(now + retry_pause(h.failures));
                    notes.push(Note::Expiring(*tag));
                }
            }
        }
        notes
    }

    /// The next renewal or revocation to finish; never, while none runs.
    pub async fn next_done(&mut self) -> DoneWork {
        match self.work.next().await {
            Some(done) => DoneWork(done),
            None => std::future::pending().await,
        }
    }

    /// What a finished renewal or revocation means.
    pub fn done(&mut self, done: DoneWork) -> Vec<Note> {
        match done.0 {
            Done::Renewed { tag, result } => self.renewed(tag, result),
            Done::Revoked { record, result } => vec![revoked(record, result)],
        }
    }

    fn renewed(&mut self, tag: u64, result: Result<Duration, SecretError>) -> Vec<Note> {
        let now = SystemTime::now();
        let Some(h) = self.held.get_mut(&tag) else {
            return Vec::new();
        };
        match result {
            Ok(granted) => {
                h.failures = 0;
                h.issued.lease.starts = now;
                h.issued.lease.ends = now + granted;
                tracing::debug!(lease = %h.record().lease, ttl_s = granted.as_secs(), "lease renewed");
                let mut notes = vec![Note::Audit(Event::Lease {
                    what: LeaseEvent::Renew {
                        ttl_s: granted.as_secs(),
                    },
                    lease: h.record(),
                })];
                if granted.as_secs_f64() < h.wanted.as_secs_f64() * SHORT_GRANT {
                    notes.extend(h.replace(tag, "max-ttl", now));
                } else {
                    h.next = Some(h.issued.lease.act_at());
                }
                notes
            }
            Err(e) => {
                h.failures += 1;
                tracing::warn!(lease = %h.record().lease, "could not renew a lease: {e}");
                let mut notes = vec![Note::Audit(Event::Lease {
                    what: LeaseEvent::RenewFailed {
                        outcome: e.kind.label(),
                    },
                    lease: h.record(),
                })];
                let lease = &h.issued.lease;
                // Near the end, or refused for good: a new one is needed. Otherwise try again.
                let late = lease.starts + lease.duration() * 5 / 6;
                if e.kind != ErrorKind::Unavailable || now >= late {
                    notes.extend(h.replace(tag, "renewal-failed", now));
                } else {
                    h.next = Some((now + retry_pause(h.failures)).min(late));
                }
                notes
            }
        }
    }

    /// Revokes the credentials no child uses any more (or forgets those that cannot be
    /// revoked: certificates, and backends with `revoke = false`).
    pub fn release(&mut self, tags: &[u64]) {
        for tag in tags {
            let Some(h) = self.held.remove(tag) else {
                continue;
            };
            let record = h.record();
            match h.issued.lease.id {
                Some(id) if h.issued.handle.backend.revokes() => {
                    self.work
                        .push(revocation(record, h.issued.handle.clone(), id));
                }
                _ => tracing::debug!(lease = %record.lease, "released; left to expire"),
            }
        }
    }

    /// At exit: revokes everything still held and waits for every call in flight (each has
    /// its own deadline), returning what to audit.
    pub async fn finish(mut self) -> Vec<Event> {
        let tags: Vec<u64> = self.held.keys().copied().collect();
        self.release(&tags);
        let mut events = Vec::new();
        while let Some(done) = self.work.next().await {
            if let Done::Revoked { record, result } = done {
                if let Note::Audit(event) = revoked(record, result) {
                    events.push(event);
                }
            }
        }
        events
    }
}

impl Held {
    /// Flags it for replacement: the policy reloads, and the reload issues a new one.
    fn replace(&mut self, tag: u64, reason: &'static str, now: SystemTime) -> Vec<Note> {
        tracing::info!(lease = %self.record().lease, reason, "an issued credential must be replaced");
        self.phase = Phase::Replacing;
        self.failures = 0;
        // Asked again if still held by then; and its end is noticed.
        self.next = Some((now + retry_pause(1)).min(self.issued.lease.ends.max(now)));
        vec![
            Note::Audit(Event::Lease {
                what: LeaseEvent::Expiring { reason },
                lease: self.record(),
            }),
            Note::Expiring(tag),
        ]
    }
}

/// 5 s, 10 s, 20 s, up to 60 s between attempts to renew or replace.
fn retry_pause(failures: u32) -> Duration {
    crate::duration::exponential(Duration::from_secs(5), failures, Duration::from_secs(60))
}

/// A finished renewal or revocation, for `Leases::done`.
#[derive(Debug)]
pub struct DoneWork(Done);

fn renewal(tag: u64, handle: Handle, id: LeaseId, wanted: Duration) -> Work {
    Box::pin(async move {
        let deadline = tokio::time::Instant::now() + CALL_DEADLINE;
        let result = handle.backend.renew(&id, wanted, deadline).await;
        Done::Renewed { tag, result }
    })
}

fn revocation(record: LeaseRecord, handle: Handle, id: LeaseId) -> Work {
    Box::pin(async move {
        let deadline = tokio::time::Instant::now() + CALL_DEADLINE;
        let result = handle.backend.revoke(&id, deadline).await;
        Done::Revoked { record, result }
    })
}

fn revoked(record: LeaseRecord, result: Result<(), SecretError>) -> Note {
    match result {
        Ok(()) => {
            tracing::info!(lease = %record.lease, "lease revoked");
            Note::Audit(Event::Lease {
                what: LeaseEvent::Revoke,
                lease: record,
            })
        }
        Err(e) => {
            tracing::warn!(lease = %record.lease, "could not revoke a lease (it ends by its TTL): {e}");
            Note::Audit(Event::Lease {
                what: LeaseEvent::RevokeFailed {
                    outcome: e.kind.label(),
                },
                lease: record,
            })
        }
    }
}

/// `revoke_now` outside any runtime (`--exec`, `check --issue`).
pub fn revoke_blocking(issued: Vec<Issued>) -> Vec<Event> {
    if issued.is_empty() {
        return Vec::new();
    }
    match crate::resolve::runtime() {
        Ok(rt) => {
            let events = rt.block_on(revoke_now(issued));
            rt.shutdown_background();
            events
        }
        Err(e) => {
            tracing::warn!("cannot revoke the issued credentials ({e}); they end by their TTL");
            Vec::new()
        }
    }
}

/// Revokes `issued` at once (a start that failed after issuing, `check --issue`), returning
/// what to audit.
pub async fn revoke_now(issued: Vec<Issued>) -> Vec<Event> {
    let mut leases = Leases::default();
    leases.add(issued, &BTreeMap::new());
    leases.finish().await
}

//! The core: [`Service`] owns the intake, the store, the watermark, the
//! counts and the storage backend, and offers the operations every front
//! door needs: accept an event, read a product or a page of them, say
//! whether the service is ready, read the counts, and drain at shutdown.
//!
//! A front door (the HTTP handlers today; a message-queue consumer could be
//! another) translates its protocol to these calls and their results back,
//! and nothing else. Below this file nobody knows about HTTP.
//!
//! # Accepting an event
//!
//! [`Service::accept`] checks the core's own rule (the product limit) and
//! asks the backend what to do with the event (`backend/mod.rs`,
//! `Admission`):
//!
//! - queue it now: the intake numbers and queues it, and the outcome is
//!   returned ([`Accept::Done`]);
//! - commit it first: the front door gets an [`Accept::Commit`], says where
//!   the outcome should go (a [`ReplyTo`]: its channel and its token for
//!   the request), and the event is posted to the backend's committers,
//!   which send the outcome there once it is committed. The front door's
//!   thread is free meanwhile.
//!
//! Every thread that calls in here is a front door's; the core starts no
//! threads of its own but the backend's (through [`Opened::start`]) and
//! the workers (`worker.rs`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::backend::{Admission, Backend, Committed, CoreParts, Opened, Outbox, OutboxError};
use crate::config::Config;
use crate::error::StartError;
use crate::event::ProductUpdate;
use crate::intake::mailbox::{Mailbox, Posted, Refused, Submission};
use crate::intake::{BatchReplyTo, Intake, Jobs, Outcome, Refusal, ReplyTo};
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::request_id::OwnedRequestId;
use crate::stats::Stats;
use crate::store::{ProductState, Seq, Store};
use crate::worker::{self, WorkerCounters, Workers};

/// `/readyz` answers 503 once the queue holds this share of `QUEUE_SIZE`.
pub const HIGH_WATER_PERCENT: usize = 90;

/// What the intake took in over the service's life, once it is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intook {
    /// Events answered 202 by this instance.
    pub accepted: u64,
    /// Events that entered this process's queue (see [`Stats::queued`]).
    pub queued: u64,
}

/// The service's state and operations; one per running service, shared by
/// every front door's threads behind an `Arc`.
pub struct Service {
    intake: Arc<Intake>,
    store: Store,
    progress: Arc<Progress>,
    metrics: Arc<Metrics>,
    counters: Arc<WorkerCounters>,
    backend: Box<dyn Backend>,
    /// `MAX_PRODUCTS`.
    max_products: usize,
    /// `WORKERS`, for the counts.
    workers: usize,
    /// Set when shutdown begins: readiness says so, and front doors ask
    /// their clients to go elsewhere.
    draining: AtomicBool,
}

/// What [`Service::accept`] did with an event.
pub enum Accept<'a> {
    /// Answered: queued, a duplicate, or refused.
    Done(Outcome),
    /// The event waits for its commit: [`Commit::post`] it with where the
    /// outcome should go.
    Commit(Commit<'a>),
}

/// An event to post to the backend's committers.
#[must_use = "the event is only taken once posted"]
pub struct Commit<'a> {
    service: &'a Service,
    mailbox: &'a Mailbox<Posted>,
    update: ProductUpdate,
    request_id: OwnedRequestId,
    accepted_at: Instant,
}

impl Commit<'_> {
    /// The id of the request that carried the event.
    pub fn request_id(&self) -> &OwnedRequestId {
        &self.request_id
    }

    /// Posts the event; `reply` gets its outcome: from the committer that
    /// commits it, or at once if the post is refused (the committers are
    /// behind: `queue_full`; shutdown has begun: `shutting_down`; they
    /// stopped because storage fails: `storage_unavailable`).
    pub fn post(self, reply: ReplyTo) {
        let Commit {
            service,
            mailbox,
            update,
            request_id,
            accepted_at,
        } = self;
        let posted = Posted::One {
            submission: Submission {
                update,
                request_id,
                accepted_at,
            },
            reply,
        };
        // Bounded like the queue: past it the committers are behind.
        let capacity = service.intake.capacity();
        if let Err((refused, posted)) = mailbox.offer(posted, capacity) {
            posted.refuse(service.refusal(refused, capacity));
        }
    }
}

/// What [`Service::accept_batch`] did with a batch request's events: one
/// outcome per event, in order; either every new event is taken (with
/// consecutive seqs) or none is.
pub enum AcceptBatch<'a> {
    /// Answered: queued (or duplicates), or refused whole.
    Done(Vec<Outcome>),
    /// The events wait for their commit, all in one:
    /// [`CommitBatch::post`] them with where the outcomes should go.
    Commit(CommitBatch<'a>),
}

/// A batch request's events to post to the backend's committers.
#[must_use = "the events are only taken once posted"]
pub struct CommitBatch<'a> {
    service: &'a Service,
    mailbox: &'a Mailbox<Posted>,
    updates: Vec<ProductUpdate>,
    request_id: OwnedRequestId,
    accepted_at: Instant,
}

impl CommitBatch<'_> {
    /// Posts the events as one; `reply` gets their outcomes from the
    /// committer that commits them (in one transaction), or at once if
    /// the post is refused (as [`Commit::post`]).
    pub fn post(self, reply: BatchReplyTo) {
        let CommitBatch {
            service,
            mailbox,
            updates,
            request_id,
            accepted_at,
        } = self;
        let submissions = updates
            .into_iter()
            .map(|update| Submission {
                update,
                request_id: request_id.clone(),
                accepted_at,
            })
            .collect();
        let posted = Posted::Batch { submissions, reply };
        let capacity = service.intake.capacity();
        if let Err((refused, posted)) = mailbox.offer(posted, capacity) {
            posted.refuse(service.refusal(refused, capacity));
        }
    }
}

/// Why the service is not ready for traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// Shutdown has begun.
    Draining,
    /// Storage fails (the detail says how).
    StorageUnavailable { detail: String },
    /// The queue is above its high-water mark.
    QueueAboveHighWater { depth: usize, capacity: usize },
}

impl Service {
    /// Builds the core, starts the backend (which restores its state into
    /// the store, the intake and the watermark first) and then the
    /// workers. On an error, whatever was started is stopped again.
    pub fn start(
        config: &Config,
        opened: Box<dyn Opened>,
        local_addr: SocketAddr,
    ) -> Result<(Arc<Service>, Workers), StartError> {
        let (intake, jobs) = Intake::with_window(
            config.queue_size,
            config.idempotency_window,
            config.idempotency_ttl,
        );
        let parts = CoreParts {
            intake: Arc::new(intake),
            store: Store::new(),
            progress: Arc::new(Progress::default()),
            metrics: Arc::new(Metrics::default()),
            local_addr,
        };
        let backend = opened.start(&parts).map_err(|source| StartError::Spawn {
            thread: "storage".to_owned(),
            source,
        })?;
        Service::with_workers(config, parts, backend, jobs)
    }

    /// The second half of [`Service::start`]: the workers, once the
    /// backend runs.
    fn with_workers(
        config: &Config,
        parts: CoreParts,
        backend: Box<dyn Backend>,
        jobs: Jobs,
    ) -> Result<(Arc<Service>, Workers), StartError> {
        let apply = worker::apply_to(
            parts.store.clone(),
            Arc::clone(&parts.progress),
            Arc::clone(&parts.metrics),
        );
        match Workers::spawn(config.workers, jobs, apply) {
            Ok(workers) => {
                let service = Service {
                    intake: parts.intake,
                    store: parts.store,
                    progress: parts.progress,
                    metrics: parts.metrics,
                    counters: Arc::clone(workers.counters()),
                    backend,
                    max_products: config.max_products,
                    workers: config.workers,
                    draining: AtomicBool::new(false),
                };
                Ok((Arc::new(service), workers))
            }
            Err((thread, source)) => {
                // The workers already started exit once the intake closes.
                backend.stop_taking(Instant::now());
                parts.intake.close();
                backend.finish();
                Err(StartError::Spawn { thread, source })
            }
        }
    }

    /// Accepts a decoded and validated event (see the module docs).
    pub fn accept(&self, update: ProductUpdate, request_id: OwnedRequestId) -> Accept<'_> {
        // The count is a lock-free read; the map is only consulted at the
        // limit.
        if self.store.len() >= self.max_products && !self.store.contains(&update.product_id) {
            return Accept::Done(Err(Refusal::ProductLimit {
                limit: self.max_products,
            }));
        }
        match self.backend.admission() {
            Admission::Queue => Accept::Done(self.intake.accept(update, request_id)),
            Admission::QueueAndReport => {
                let reported = update
                    .event_id
                    .clone()
                    .map(|event_id| (event_id, update.fingerprint()));
                let outcome = self.intake.accept(update, request_id);
                if let (Ok(accepted), Some((event_id, fingerprint))) = (&outcome, reported)
                    && !accepted.duplicate
                {
                    self.backend.queued(accepted.seq, event_id, fingerprint);
                }
                Accept::Done(outcome)
            }
            Admission::Commit(mailbox) => Accept::Commit(Commit {
                service: self,
                mailbox,
                update,
                request_id,
                accepted_at: Instant::now(),
            }),
            Admission::Refuse => Accept::Done(Err(Refusal::StorageUnavailable)),
        }
    }

    /// Takes a batch request's events, all or none (see [`AcceptBatch`]).
    /// A batch that would take the store past `MAX_PRODUCTS` is refused
    /// whole.
    pub fn accept_batch(
        &self,
        updates: Vec<ProductUpdate>,
        request_id: OwnedRequestId,
    ) -> AcceptBatch<'_> {
        let refuse_all = |refusal: Refusal| AcceptBatch::Done(vec![Err(refusal); updates.len()]);
        // The count is a lock-free read; the map is only consulted when the
        // batch could take the store past the limit.
        if self.store.len() + updates.len() > self.max_products {
            let new_products: HashSet<&str> = updates
                .iter()
                .map(|u| &*u.product_id)
                .filter(|id| !self.store.contains(id))
                .collect();
            if self.store.len() + new_products.len() > self.max_products {
                return refuse_all(Refusal::ProductLimit {
                    limit: self.max_products,
                });
            }
        }
        match self.backend.admission() {
            Admission::Queue => AcceptBatch::Done(self.intake.accept_all(updates, &request_id)),
            Admission::QueueAndReport => {
                let reported: Vec<_> = updates
                    .iter()
                    .map(|u| u.event_id.clone().map(|id| (id, u.fingerprint())))
                    .collect();
                let outcomes = self.intake.accept_all(updates, &request_id);
                for (outcome, reported) in outcomes.iter().zip(reported) {
                    if let (Ok(accepted), Some((event_id, fingerprint))) = (outcome, reported)
                        && !accepted.duplicate
                    {
                        self.backend.queued(accepted.seq, event_id, fingerprint);
                    }
                }
                AcceptBatch::Done(outcomes)
            }
            Admission::Commit(mailbox) => AcceptBatch::Commit(CommitBatch {
                service: self,
                mailbox,
                updates,
                request_id,
                accepted_at: Instant::now(),
            }),
            Admission::Refuse => refuse_all(Refusal::StorageUnavailable),
        }
    }

    /// The refusal of a post the committers' mailbox would not take.
    fn refusal(&self, refused: Refused, capacity: usize) -> Refusal {
        match refused {
            Refused::Full => Refusal::QueueFull { capacity },
            Refused::Closed if self.backend.unavailable().is_some() => Refusal::StorageUnavailable,
            Refused::Closed => Refusal::ShuttingDown,
        }
    }

    /// The counters and histograms every thread records into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The product's current state, or `None` if no event for it has been
    /// applied.
    pub fn product(&self, product_id: &str) -> Option<ProductState> {
        self.store.get(product_id)
    }

    /// Up to `limit` products whose ids sort after the bytes `after`.
    pub fn products_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Box<str>, ProductState)> {
        self.store.list_after(after, limit)
    }

    /// Read-your-writes: waits until every event up to `seq` is applied or
    /// `deadline` passes; returns the watermark then (`>= seq`: caught
    /// up). The thread parks; nobody polls (`progress.rs`).
    pub fn wait_applied(&self, seq: Seq, deadline: Instant) -> Seq {
        let through = self.progress.through();
        if through >= seq {
            return through;
        }
        self.intake.hurry();
        self.progress.wait_through(seq, deadline)
    }

    /// Ready for traffic, or why not: draining, storage failing, or the
    /// queue above [`HIGH_WATER_PERCENT`] of its capacity.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.is_draining() {
            return Err(NotReady::Draining);
        }
        if let Some(detail) = self.backend.unavailable() {
            return Err(NotReady::StorageUnavailable { detail });
        }
        let (depth, capacity) = (self.intake.depth(), self.intake.capacity());
        if depth * 100 >= capacity * HIGH_WATER_PERCENT {
            return Err(NotReady::QueueAboveHighWater { depth, capacity });
        }
        Ok(())
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Every count the core owns, read now from its owner. (A front door
    /// adds its own: the HTTP server's connections.)
    pub fn stats(&self) -> Stats {
        Stats {
            accepted: self.accepted(),
            queued: self.intake.accepted(),
            applied: self.counters.applied.load(Ordering::Relaxed),
            panics: self.counters.panics.load(Ordering::Relaxed),
            stale_fields: self.counters.stale_fields.load(Ordering::Relaxed),
            queue_depth: self.intake.depth(),
            queue_capacity: self.intake.capacity(),
            products: self.store.len(),
            workers: self.workers,
            waiting_readers: self.progress.waiting(),
            idempotency_window: self.intake.window_len(),
            open_connections: 0,
            max_connections: 0,
            storage_unavailable: self
                .backend
                .is_durable()
                .then(|| self.backend.unavailable().is_some()),
            journal_lag: self.backend.lag(self.progress.through()),
        }
    }

    /// Events answered 202 by this instance.
    fn accepted(&self) -> u64 {
        self.backend
            .accepted()
            .unwrap_or_else(|| self.intake.accepted())
    }

    /// Whether a 202 means the event is journaled (events not applied at
    /// shutdown are then applied at the next start).
    pub fn journals(&self) -> bool {
        self.backend.journals()
    }

    /// The journal as an outbox (see [`Outbox`]); `None` in the modes
    /// without a journal.
    pub fn outbox(&self) -> Option<Result<Box<dyn Outbox>, OutboxError>> {
        self.backend.outbox()
    }

    /// Shutdown step 1: stop taking events. The backend commits what was
    /// posted and lets it reach the queue (by `deadline`), then the intake
    /// closes: every event answered 202 is in the queue, and from here on
    /// an event is refused `shutting_down`. Returns the final counts.
    pub fn drain(&self, deadline: Instant) -> Intook {
        self.draining.store(true, Ordering::Relaxed);
        self.backend.stop_taking(deadline);
        let queued = self.intake.close();
        Intook {
            accepted: self.backend.accepted().unwrap_or(queued),
            queued,
        }
    }

    /// Shutdown, once the workers have drained the queue: the watermark is
    /// final, so `min_seq` readers waiting beyond it are answered now.
    pub fn release_readers(&self) {
        self.progress.release_all();
    }

    /// Shutdown, once the workers have stopped: the backend writes what is
    /// left and stops. `None` in memory mode.
    pub fn finish(&self) -> Option<Committed> {
        self.backend.finish()
    }
}

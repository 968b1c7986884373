//! The answerer thread (`http-answerer`): writes the answers to the
//! `POST /events` that waited for a commit.
//!
//! In the durable modes an event's 202 waits for its commit, which a
//! committer makes for many events at once. If the connection's thread
//! slept until then, each such request would wake it twice: for the answer,
//! then for the client's next request. So the handler *defers* the answer
//! (`Request::defer`, the fork's `inline/deferred.rs`), posts the event
//! with a [`ReplyTo`] addressed to this thread's channel, and goes back to
//! read the connection's next request. The committer sends the outcome
//! here as a message (it never runs HTTP code); this thread renders the
//! answer and has the fork write it. The fork's write never blocks (a
//! client that does not read cannot stall the answers to everyone else),
//! and answers leave each connection in the order of its requests.
//!
//! ```text
//!  connection thread ──post(event, ReplyTo{reply_tx, Later})──▶ committer ──(Later, outcome)──▶ answerer ──▶ socket
//! ```
//!
//! One thread for all the connections: a committer sends a whole batch's
//! outcomes at once, so the answerer wakes once per batch, not once per
//! event. It exits when every sender is gone: the HTTP server's, once it
//! has stopped, and the replies still out, which the backend's committers
//! have all sent by then (shutdown step 4 comes before step 5).

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tiny_http::inline::{Deferred, Response};

use super::answer::{self, Asked, Finishing};
use super::problem::ApiError;
use super::route::Route;
use crate::intake::{BatchReplyTo, Outcome, ReplyTo};
use crate::metrics::Metrics;
use crate::product_id::ProductId;
use crate::request_id::OwnedRequestId;
use crate::service::Service;

/// How long shutdown waits for the answerer to write the answers it has
/// and exit, once the HTTP server has stopped.
const STOP_WAIT: Duration = Duration::from_millis(300);

/// A `POST /events` whose answer waits for its commit: what the answer
/// needs, carried with the event to the committer and back.
pub struct Later {
    pub deferred: Deferred,
    pub product_id: ProductId,
    pub event_id: Option<Box<str>>,
    pub request_id: OwnedRequestId,
    /// The request target, for the access line.
    pub url: Box<str>,
    /// When its head was read: the latency counts from here.
    pub started: Instant,
}

/// A batch request (NDJSON) whose answer waits for its commit.
pub struct LaterBatch {
    pub deferred: Deferred,
    /// Each event's line in the body.
    pub lines: Vec<usize>,
    pub request_id: OwnedRequestId,
    pub url: Box<str>,
    pub started: Instant,
}

/// The handlers' way to address a reply to the answerer.
#[derive(Clone)]
pub struct Replies {
    one: Sender<(Later, Outcome)>,
    batch: Sender<(LaterBatch, Vec<Outcome>)>,
}

impl Replies {
    /// The reply for a deferred answer: its outcome comes back here.
    pub fn reply_to(&self, later: Later) -> ReplyTo {
        ReplyTo::new(&self.one, later)
    }

    /// The reply for a deferred batch answer: its outcomes come back here.
    pub fn batch_reply_to(&self, later: LaterBatch) -> BatchReplyTo {
        BatchReplyTo::new(&self.batch, later)
    }
}

/// The running answerer: where replies are addressed, and its thread.
pub struct Answerer {
    replies: Replies,
    /// Disconnects when the thread exits.
    done_rx: Receiver<()>,
    thread: JoinHandle<()>,
}

impl Answerer {
    /// Starts the thread. `access_log`: whether the access line is written.
    pub fn start(service: Arc<Service>, access_log: bool) -> io::Result<Answerer> {
        let (one, one_rx) = crossbeam_channel::unbounded::<(Later, Outcome)>();
        let (batch, batch_rx) = crossbeam_channel::unbounded::<(LaterBatch, Vec<Outcome>)>();
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let thread = thread::Builder::new()
            .name("http-answerer".to_owned())
            .spawn(move || {
                let (mut one_rx, mut batch_rx) = (Some(one_rx), Some(batch_rx));
                // Until both channels are disconnected.
                while one_rx.is_some() || batch_rx.is_some() {
                    let never_one = crossbeam_channel::never();
                    let never_batch = crossbeam_channel::never();
                    crossbeam_channel::select! {
                        recv(one_rx.as_ref().unwrap_or(&never_one)) -> reply => match reply {
                            Ok((later, outcome)) => answer_one(&service, access_log, later, outcome),
                            Err(_) => one_rx = None,
                        },
                        recv(batch_rx.as_ref().unwrap_or(&never_batch)) -> reply => match reply {
                            Ok((later, outcomes)) => answer_batch(&service, access_log, later, outcomes),
                            Err(_) => batch_rx = None,
                        },
                    }
                }
                drop(done_tx);
            })?;
        Ok(Answerer {
            replies: Replies { one, batch },
            done_rx,
            thread,
        })
    }

    /// Where the handlers address their replies.
    pub fn replies(&self) -> Replies {
        self.replies.clone()
    }

    /// Shutdown, once the HTTP server has stopped: drops this sender and
    /// waits (a bounded time: a reply leaked by a bug must not hold the
    /// shutdown) for the thread to write what it has and exit.
    pub fn stop(self) {
        let Answerer {
            replies,
            done_rx,
            thread,
        } = self;
        drop(replies);
        match done_rx.recv_timeout(STOP_WAIT) {
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                if thread.join().is_err() {
                    log::error!("shutdown: the http-answerer thread had panicked");
                }
            }
            _ => log::error!(
                "shutdown: the http-answerer still had replies to wait for after {STOP_WAIT:?} (a bug); not waiting for it"
            ),
        }
    }
}

/// Renders and writes one answer: the same answer the connection's thread
/// would have written.
fn answer_one(service: &Service, access_log: bool, later: Later, outcome: Outcome) {
    let Later {
        deferred,
        product_id,
        event_id,
        request_id,
        url,
        started,
    } = later;
    let asked = (request_id, url, started);
    write(service, access_log, deferred, asked, |metrics, response| {
        answer::event_outcome(outcome, &product_id, event_id.as_deref(), metrics, response)
    });
}

/// Renders and writes a batch request's answer, as [`answer_one`].
fn answer_batch(service: &Service, access_log: bool, later: LaterBatch, outcomes: Vec<Outcome>) {
    let LaterBatch {
        deferred,
        lines,
        request_id,
        url,
        started,
    } = later;
    let asked = (request_id, url, started);
    write(service, access_log, deferred, asked, |metrics, response| {
        answer::batch_outcome(outcomes, &lines, metrics, response)
    });
}

/// Has the fork write a deferred answer, which `render` fills in, and
/// completes it as a connection's thread does (the headers, the metrics,
/// the access line). `asked`: the request's id, target and start. A bug
/// here costs this one answer (its client gets a 500: the `Deferred` is
/// dropped unanswered), not the thread.
fn write(
    service: &Service,
    access_log: bool,
    deferred: Deferred,
    asked: (OwnedRequestId, Box<str>, Instant),
    render: impl FnOnce(&Metrics, &mut Response) -> Result<(), ApiError>,
) {
    let (request_id, url, started) = asked;
    let written = panic::catch_unwind(AssertUnwindSafe(|| {
        deferred.answer(|response| {
            let metrics = service.metrics();
            let result = render(metrics, response);
            let asked = Asked {
                route: Route::PostEvent,
                method: "POST",
                url: &url,
                request_id: request_id.borrow(),
                started,
            };
            let finishing = Finishing {
                metrics,
                draining: service.is_draining(),
                access_log,
            };
            answer::complete(finishing, &asked, result, response);
        });
    }));
    if written.is_err() {
        log::error!(
            "http-answerer: answering a client panicked (a bug; see the panic above); it was answered 500"
        );
    }
}

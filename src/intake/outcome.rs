//! What an event's acceptance comes to, and how that answer travels back to
//! a front door that could not wait for it.
//!
//! An [`Outcome`] is a value: the intake returns it, a committer computes it
//! for each event of its batch. Most events are answered on the thread that
//! asked (memory mode: the event is queued, or refused, at once). An event
//! whose answer waits for a commit carries a [`ReplyTo`]: the channel of the
//! front door that posted it, and the front door's own token for the
//! request. The committer *sends* the outcome there, as a message; it never
//! runs front-door code. The front door's thread that receives it (the HTTP
//! answerer, say) does the answering. So the way from a socket to the store
//! and back is a pipeline of threads passing values, with no callback from
//! a lower layer into a higher one.

use std::fmt;

use crossbeam_channel::Sender;

use crate::store::Seq;

/// An event taken: its seq, new or (for a retried `event_id`) the one the
/// first copy got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub seq: Seq,
    /// True if the `event_id` was seen before: nothing new was queued.
    pub duplicate: bool,
}

/// Why an event was not taken. Each names what a client can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The `event_id` was accepted before with different content (as `seq`).
    IdempotencyConflict { seq: Seq },
    /// The queue (or the committers' mailbox) holds `capacity` events
    /// already. Retry shortly.
    QueueFull { capacity: usize },
    /// The event is for a new product and the store holds `limit` already.
    ProductLimit { limit: usize },
    /// Shutdown has begun; no new events are taken.
    ShuttingDown,
    /// The event could not be made durable (or storage is failing, so it is
    /// not tried). Nothing was acknowledged; retry later.
    StorageUnavailable,
    /// The event is fine, but another event of its batch request was
    /// refused, so none of them was taken (all or nothing).
    WithItsBatch,
    /// The `event_id` is used for a different event earlier in the same
    /// batch request, or in a request committed together with it, which
    /// has no seq to name (yet).
    ConflictInCommit,
}

impl Refusal {
    /// The stable code a front door reports it with (HTTP's problem
    /// `code`, a dead letter's `x-problem-code` header).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::IdempotencyConflict { .. } => "idempotency_conflict",
            Refusal::QueueFull { .. } => "queue_full",
            Refusal::ProductLimit { .. } => "product_limit_reached",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::StorageUnavailable => "storage_unavailable",
            Refusal::WithItsBatch => "refused_with_its_batch",
            Refusal::ConflictInCommit => "idempotency_conflict",
        }
    }
}

/// What happened, naming the setting or the event it is about; a front
/// door adds what its client can do (HTTP: when to retry).
impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::IdempotencyConflict { seq } => write!(
                f,
                "the event_id was already used for a different event (seq {seq})"
            ),
            Refusal::QueueFull { capacity } => {
                write!(f, "the event queue is full ({capacity} events, QUEUE_SIZE)")
            }
            Refusal::ProductLimit { limit } => write!(
                f,
                "the store holds its limit of {limit} products (MAX_PRODUCTS) and the event is for a new one"
            ),
            Refusal::ShuttingDown => f.write_str("the service is shutting down"),
            Refusal::StorageUnavailable => f.write_str(
                "the event could not be committed to the durable store (DATA_DIR or DATABASE_URL)",
            ),
            Refusal::WithItsBatch => {
                f.write_str("another event of the same request was refused, so none was taken")
            }
            Refusal::ConflictInCommit => f.write_str(
                "the event_id is used for a different event earlier in this request (or in one committed with it)",
            ),
        }
    }
}

/// What accepting one event came to.
pub type Outcome = Result<Accepted, Refusal>;

/// Where the outcome of an event that waits for its commit is sent: a front
/// door's channel, with the front door's token for the request. Sent exactly
/// once ([`ReplyTo::send`]); a `ReplyTo` dropped unsent drops the token with
/// it (the HTTP front door's token then answers its client 500).
pub struct ReplyTo(Box<dyn Deliver>);

/// The token and its channel, with the token's type erased so that a
/// committer can hold replies for any front door. Implemented only here:
/// delivering is a channel send, nothing else.
trait Deliver: Send {
    fn deliver(self: Box<Self>, outcome: Outcome);
}

struct Addressed<T, O = Outcome> {
    reply_tx: Sender<(T, O)>,
    token: T,
}

impl<T: Send> Deliver for Addressed<T> {
    fn deliver(self: Box<Self>, outcome: Outcome) {
        // The front door has stopped listening (it is shutting down): the
        // token is dropped with the message, which is what it is there for.
        let _ = self.reply_tx.send((self.token, outcome));
    }
}

impl ReplyTo {
    /// A reply that sends `(token, outcome)` on `reply_tx`.
    pub fn new<T: Send + 'static>(reply_tx: &Sender<(T, Outcome)>, token: T) -> ReplyTo {
        ReplyTo(Box::new(Addressed {
            reply_tx: reply_tx.clone(),
            token,
        }))
    }

    /// Sends the outcome to the front door.
    pub fn send(self, outcome: Outcome) {
        self.0.deliver(outcome);
    }
}

/// Where the outcomes of a batch request's events go, together, in the
/// order of its events: as [`ReplyTo`], one message for the whole request.
pub struct BatchReplyTo(Box<dyn DeliverAll>);

trait DeliverAll: Send {
    fn deliver(self: Box<Self>, outcomes: Vec<Outcome>);
}

impl<T: Send> DeliverAll for Addressed<T, Vec<Outcome>> {
    fn deliver(self: Box<Self>, outcomes: Vec<Outcome>) {
        let _ = self.reply_tx.send((self.token, outcomes));
    }
}

impl BatchReplyTo {
    /// A reply that sends `(token, outcomes)` on `reply_tx`.
    pub fn new<T: Send + 'static>(reply_tx: &Sender<(T, Vec<Outcome>)>, token: T) -> BatchReplyTo {
        BatchReplyTo(Box::new(Addressed {
            reply_tx: reply_tx.clone(),
            token,
        }))
    }

    /// Sends the outcomes, one per event in the request's order.
    pub fn send(self, outcomes: Vec<Outcome>) {
        self.0.deliver(outcomes);
    }
}

impl fmt::Debug for BatchReplyTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BatchReplyTo")
    }
}

impl fmt::Debug for ReplyTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplyTo")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_carries_its_token_back_with_the_outcome() {
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded::<(&str, Outcome)>();
        let reply = ReplyTo::new(&reply_tx, "request 7");
        reply.send(Err(Refusal::ShuttingDown));
        assert_eq!(
            reply_rx.try_recv(),
            Ok(("request 7", Err(Refusal::ShuttingDown)))
        );
        // Nobody listening: the send is dropped, not a panic.
        drop(reply_rx);
        ReplyTo::new(&reply_tx, "late").send(Err(Refusal::ShuttingDown));
    }
}

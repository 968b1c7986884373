//! The one thing an application gives the server: a [`Handler`], which
//! answers requests and renders refusals.
//!
//! Its methods run on the server's connection threads (an accepting thread
//! or a lot thread), many at once, each on the thread that read the
//! request. The trait is the seam between the server and the application:
//! the server owns the connection and the framing of an answer, the
//! handler owns its status, headers and body.

use super::rejection::Rejection;
use super::request::Request;
use super::response::Response;

/// What the application does with requests. Called on connection threads,
/// many at once.
pub trait Handler: Send + Sync + 'static {
    /// Answers `request` by filling in `response`. The server writes the
    /// status line, `Date`, `Content-Length` and `Connection` itself.
    /// A body left unread closes the connection after the answer; a panic
    /// is answered with a bare 500 and closes it too.
    fn handle(&self, request: &mut Request<'_>, response: &mut Response);

    /// Renders the answer to something the server refuses before a request
    /// reaches [`Handler::handle`] (a malformed or oversized head, a head
    /// timeout, too many connections, a request during [`Server::stop`](super::Server::stop)).
    /// The connection closes after it.
    fn refuse(&self, rejection: Rejection, response: &mut Response);
}

//! # Simple usage
//!
//! ## Creating the server
//!
//! The easiest way to create a server is to call `Server::http()`.
//!
//! The `http()` function returns an `IoResult<Server>` which will return an error
//! in the case where the server creation fails (for example if the listening port is already
//! occupied).
//!
//! ```no_run
//! let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! ```
//!
//! A newly-created `Server` will immediately start listening for incoming connections and HTTP
//! requests.
//!
//! ## Receiving requests
//!
//! Calling `server.recv()` will block until the next request is available.
//! This function returns an `IoResult<Request>`, so you need to handle the possible errors.
//!
//! ```no_run
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//!
//! loop {
//!     // blocks until the next request is received
//!     let request = match server.recv() {
//!         Ok(rq) => rq,
//!         Err(e) => { println!("error: {}", e); break }
//!     };
//!
//!     // do something with the request
//!     // ...
//! }
//! ```
//!
//! In a real-case scenario, you will probably want to spawn multiple worker tasks and call
//! `server.recv()` on all of them. Like this:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::thread;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! let server = Arc::new(server);
//! let mut guards = Vec::with_capacity(4);
//!
//! for _ in (0 .. 4) {
//!     let server = server.clone();
//!
//!     let guard = thread::spawn(move || {
//!         loop {
//!             let rq = server.recv().unwrap();
//!
//!             // ...
//!         }
//!     });
//!
//!     guards.push(guard);
//! }
//! ```
//!
//! If you don't want to block, you can call `server.try_recv()` instead.
//!
//! ## Handling requests
//!
//! The `Request` object returned by `server.recv()` contains informations about the client's request.
//! The most useful methods are probably `request.method()` and `request.url()` which return
//! the requested method (`GET`, `POST`, etc.) and url.
//!
//! To handle a request, you need to create a `Response` object. See the docs of this object for
//! more infos. Here is an example of creating a `Response` from a file:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! ```
//!
//! All that remains to do is call `request.respond()`:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
//! # let request = server.recv().unwrap();
//! # let response = tiny_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! let _ = request.respond(response);
//! ```
// PATCHED (product-update-service): newer rustc flags two unused items in 0.12.0.
#![allow(dead_code, unused_imports)]
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]

use std::error::Error;
use std::io::Error as IoError;
use std::io::ErrorKind as IoErrorKind;
use std::io::Result as IoResult;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use client::ClientConnection;
use connection::Connection;
use util::MessagesQueue;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use connection::{ConfigListenAddr, ListenAddr, Listener};
pub use limits::{Limits, Rejection, Responder};
pub use request::{ReadWrite, Request};
pub use response::{Response, ResponseBox};
pub use test::TestRequest;

mod client;
mod common;
mod connection;
// PATCHED (product-update-service): requests answered on their connection's thread.
pub mod inline;
// PATCHED (product-update-service)
mod limits;
mod request;
mod response;
mod test;
mod util;

/// The main class of this library.
///
/// Destroying this object will immediately close the listening socket and the reading
///  part of all the client's connections. Requests that have already been returned by
///  the `recv()` function will not close and the responses will be transferred to the client.
pub struct Server {
    // should be false as long as the server exists
    // when set to true, all the subtasks will close within a few hundreds ms
    close: Arc<AtomicBool>,

    // queue for messages received by child threads
    messages: Arc<MessagesQueue<Message>>,

    // result of TcpListener::local_addr()
    listening_addr: ListenAddr,

    // PATCHED (product-update-service): the bounds, and the answers to
    // refusals (used on drop)
    limits: Arc<Limits>,
}

enum Message {
    Error(IoError),
    NewRequest(Request),
}

impl From<IoError> for Message {
    fn from(e: IoError) -> Message {
        Message::Error(e)
    }
}

impl From<Request> for Message {
    fn from(rq: Request) -> Message {
        Message::NewRequest(rq)
    }
}

// this trait is to make sure that Server implements Share and Send
#[doc(hidden)]
trait MustBeShareDummy: Sync + Send {}
#[doc(hidden)]
impl MustBeShareDummy for Server {}

pub struct IncomingRequests<'a> {
    server: &'a Server,
}

/// Represents the parameters required to create a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The addresses to try to listen to.
    pub addr: ConfigListenAddr,

    /// If `Some`, then the server will use SSL to encode the communications.
    /// PATCHED (product-update-service): this fork has no TLS; `Some` is an
    /// error (terminate TLS in a reverse proxy).
    pub ssl: Option<SslConfig>,
}

/// Configuration of the server for SSL.
/// PATCHED (product-update-service): kept so that `from_listener(l, None)`
/// still compiles; this fork refuses `Some` (it has no TLS).
#[derive(Debug, Clone)]
pub struct SslConfig {
    /// Contains the public certificate to send to clients.
    pub certificate: Vec<u8>,
    /// Contains the ultra-secret private key used to decode communications.
    pub private_key: Vec<u8>,
}

impl Server {
    /// Shortcut for a simple server on a specific address.
    #[inline]
    pub fn http<A>(addr: A) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: None,
        })
    }

    #[cfg(unix)]
    #[inline]
    /// Shortcut for a UNIX socket server at a specific path
    pub fn http_unix(
        path: &std::path::Path,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::unix_from_path(path),
            ssl: None,
        })
    }

    /// Builds a new server that listens on the specified address.
    pub fn new(config: ServerConfig) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = config.addr.bind()?;
        Self::from_listener(listener, config.ssl)
    }

    /// Builds a new server using the specified TCP listener.
    ///
    /// This is useful if you've constructed TcpListener using some less usual method
    /// such as from systemd. For other cases, you probably want the `new()` function.
    pub fn from_listener<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Self::from_listener_with_limits(listener, ssl_config, Limits::default())
    }

    /// PATCHED (product-update-service): like `from_listener`, with bounds
    /// on what a client can make the server hold (see `Limits`): at most
    /// `max_connections` connections, each read and write bounded by
    /// `socket_timeout`, idle connections closed after `keep_alive_timeout`,
    /// deadlines for a whole request head and a whole body, and a head size
    /// limit. Every refusal is answered through `limits.respond`.
    pub fn from_listener_with_limits<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
        limits: Limits,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = listener.into();
        // building the "close" variable
        let close_trigger = Arc::new(AtomicBool::new(false));

        // building the TcpListener
        let (server, local_addr) = {
            let local_addr = listener.local_addr()?;
            log::debug!("Server listening on {}", local_addr);
            (listener, local_addr)
        };

        // PATCHED (product-update-service): no TLS in this fork.
        if ssl_config.is_some() {
            return Err(
                "this fork of tiny_http has no TLS; terminate TLS in a reverse proxy".into(),
            );
        }

        // creating a task where server.accept() is continuously called
        // and ClientConnection objects are pushed in the messages queue
        let messages = MessagesQueue::with_capacity(8);

        let inside_close_trigger = close_trigger.clone();
        // PATCHED (product-update-service): connections being served.
        let active = Arc::clone(&limits.open_connections);
        let limits = Arc::new(limits);
        let inside_limits = Arc::clone(&limits);
        let inside_messages = messages.clone();
        thread::spawn(move || {
            // a tasks pool is used to dispatch the connections into threads
            let tasks_pool = util::TaskPool::new();

            log::debug!("Running accept thread");
            while !inside_close_trigger.load(Relaxed) {
                let new_client = match server.accept() {
                    Ok((sock, _)) => {
                        use util::RefinedTcpStream;
                        let limits = &inside_limits;
                        if limits
                            .max_connections
                            .is_some_and(|max| active.load(Relaxed) >= max)
                        {
                            refuse(sock, limits);
                            continue;
                        }
                        // Reads are bounded per phase (see `ReadClock`).
                        let _ = sock.set_write_timeout(limits.socket_timeout);
                        // PATCHED (product-update-service): a second handle
                        // on the socket, to shut it down after `Connection: close`.
                        let close_handle = client::CloseHandle::new(sock.try_clone().ok());
                        // PATCHED (product-update-service): upstream unwrapped
                        // the clone, so running out of file descriptors right
                        // after an accept panicked the accept thread for good.
                        let (read_closable, write_closable) = match RefinedTcpStream::new(sock) {
                            Ok(halves) => halves,
                            Err(e) => {
                                log::error!("Error setting up a connection: {}; dropping it", e);
                                continue;
                            }
                        };

                        Ok(ClientConnection::new(
                            write_closable,
                            read_closable,
                            close_handle,
                            Arc::clone(limits),
                        ))
                    }
                    Err(e) => Err(e),
                };

                match new_client {
                    Ok(client) => {
                        let messages = inside_messages.clone();
                        let limits = Arc::clone(&inside_limits);
                        let connection = ActiveConnection::new(&active);
                        let mut client = Some(client);
                        tasks_pool.spawn(Box::new(move || {
                            let _connection = &connection;
                            if let Some(client) = client.take() {
                                // Synchronization is needed for HTTPS requests to avoid a deadlock
                                if client.secure() {
                                    let (sender, receiver) = mpsc::channel();
                                    for rq in client {
                                        messages.push(rq.with_notify_sender(sender.clone()).into());
                                        receiver.recv().unwrap();
                                    }
                                } else {
                                    // PATCHED (product-update-service): at most
                                    // MAX_IN_FLIGHT requests of one connection are
                                    // queued or being answered at once. Upstream read
                                    // and queued pipelined requests without limit, so a
                                    // client that sends requests without reading the
                                    // answers filled the queue (memory), pushed
                                    // everyone else's requests behind its own, and
                                    // held every request thread: each waits for the
                                    // previous answer on the connection to be written.
                                    let (answered, answers) = mpsc::channel();
                                    let mut in_flight = 0usize;
                                    for rq in client {
                                        while answers.try_recv().is_ok() {
                                            in_flight = in_flight.saturating_sub(1);
                                        }
                                        if in_flight >= MAX_IN_FLIGHT {
                                            if answers.recv().is_err() {
                                                break;
                                            }
                                            in_flight = in_flight.saturating_sub(1);
                                        }
                                        // PATCHED (product-update-service): the
                                        // answer just waited for may have closed the
                                        // connection (`Connection: close`, or a
                                        // write that failed); this request was read
                                        // before that answer existed, so it must not
                                        // be handed out after all.
                                        if rq.connection_closed() {
                                            break;
                                        }
                                        in_flight += 1;
                                        let rq = rq.with_notify_sender(answered.clone());
                                        // PATCHED (product-update-service): once the
                                        // Server is dropped nobody reads `messages`;
                                        // answer instead of queueing into the void
                                        // (the client would wait forever).
                                        if let Err(Message::NewRequest(rq)) =
                                            messages.push_open(rq.into())
                                        {
                                            let _ =
                                                rq.respond(limits.answer(Rejection::ShuttingDown));
                                            break;
                                        }
                                    }
                                }
                            }
                        }));
                    }

                    // PATCHED (product-update-service): upstream stopped
                    // accepting for good on the first error (for example
                    // EMFILE, too many open files, which passes once clients
                    // disconnect). Log it, pause briefly so a persistent error
                    // is not a hot loop, and keep accepting.
                    Err(e) => {
                        log::error!("Error accepting new client: {}; retrying", e);
                        thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            log::debug!("Terminating accept thread");
        });

        // result
        Ok(Server {
            messages,
            close: close_trigger,
            listening_addr: local_addr,
            limits,
        })
    }

    /// Returns an iterator for all the incoming requests.
    ///
    /// The iterator will return `None` if the server socket is shutdown.
    #[inline]
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    /// Returns the address the server is listening to.
    #[inline]
    pub fn server_addr(&self) -> ListenAddr {
        self.listening_addr.clone()
    }

    /// Returns the number of clients currently connected to the server.
    pub fn num_connections(&self) -> usize {
        unimplemented!()
        //self.requests_receiver.lock().len()
    }

    /// Blocks until an HTTP request has been submitted and returns it.
    pub fn recv(&self) -> IoResult<Request> {
        match self.messages.pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(rq),
            None => Err(IoError::other("thread unblocked")),
        }
    }

    /// Same as `recv()` but doesn't block longer than timeout
    pub fn recv_timeout(&self, timeout: Duration) -> IoResult<Option<Request>> {
        match self.messages.pop_timeout(timeout) {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Same as `recv()` but doesn't block.
    pub fn try_recv(&self) -> IoResult<Option<Request>> {
        match self.messages.try_pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Unblock thread stuck in recv() or incoming_requests().
    /// If there are several such threads, only one is unblocked.
    /// This method allows graceful shutdown of server.
    pub fn unblock(&self) {
        self.messages.unblock();
    }
}

/// PATCHED (product-update-service): requests of one connection queued or
/// being answered at once. One: pipelined requests are still all answered,
/// in order, but one after the other, so a connection never holds more than
/// one request thread (one that stops reading its answers holds that one
/// for at most the write timeout). The next request is read meanwhile, so a
/// keep-alive client waits for nothing.
const MAX_IN_FLIGHT: usize = 1;

/// PATCHED (product-update-service): counts a connection as active for as
/// long as its task (and so this value) lives.
struct ActiveConnection(Arc<std::sync::atomic::AtomicUsize>);

impl ActiveConnection {
    fn new(active: &Arc<std::sync::atomic::AtomicUsize>) -> ActiveConnection {
        active.fetch_add(1, Relaxed);
        ActiveConnection(Arc::clone(active))
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// PATCHED (product-update-service): answers a connection over
/// `max_connections` from the accept thread (a short write timeout so a
/// client cannot stall it) and closes it.
fn refuse(sock: Connection, limits: &Limits) {
    let mut sock = sock;
    let _ = sock.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = limits.answer(Rejection::TooManyConnections).raw_print(
        &mut sock,
        HTTPVersion(1, 1),
        &[],
        false,
        None,
    );
    let _ = sock.shutdown(Shutdown::Write);
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close.store(true, Relaxed);
        // PATCHED (product-update-service): answer what is still queued and
        // refuse further pushes (see `Rejection::ShuttingDown`).
        for message in self.messages.close() {
            if let Message::NewRequest(rq) = message {
                let _ = rq.respond(self.limits.answer(Rejection::ShuttingDown));
            }
        }
        // Connect briefly to ourselves to unblock the accept thread
        let maybe_stream = match &self.listening_addr {
            ListenAddr::IP(addr) => TcpStream::connect(addr).map(Connection::from),
            #[cfg(unix)]
            ListenAddr::Unix(addr) => {
                // TODO: use connect_addr when its stabilized.
                let path = addr.as_pathname().unwrap();
                std::os::unix::net::UnixStream::connect(path).map(Connection::from)
            }
        };
        if let Ok(stream) = maybe_stream {
            let _ = stream.shutdown(Shutdown::Both);
        }

        #[cfg(unix)]
        if let ListenAddr::Unix(addr) = &self.listening_addr {
            if let Some(path) = addr.as_pathname() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

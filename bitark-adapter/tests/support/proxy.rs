//! A fault-injecting TCP proxy, run in-process on tokio, to sit between two BitArk nodes
//! and cut, slow down or lose the replication traffic between them.
//!
//! A [`Proxy`] listens on `127.0.0.1:0` and forwards each connection it accepts to its
//! upstream, which may be set or moved at any time (a restarted node listens on a new
//! port); a connection keeps the upstream it was opened to. Without an upstream,
//! connections are accepted and closed at once.
//!
//! The [`Mode`] applies to new connections at once and to open ones at their next
//! chunk, so HTTP keep-alive connections are affected too; [`Mode::Cut`] closes the open
//! ones at once. I/O errors close the connection they happen on, never panic. The proxy
//! stops, closing every connection, when the last clone of its handle is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Largest chunk read from one side before it is forwarded to the other.
const CHUNK: usize = 16 * 1024;

/// What the proxy does to the traffic it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways untouched.
    Pass,
    /// Closes new connections as soon as they are accepted, and every open one.
    Cut,
    /// Forwards both ways, holding each chunk back this long first.
    Delay(Duration),
    /// Forwards requests; once the upstream answers, discards the answer and closes the
    /// connection: the request took effect, its acknowledgement is lost.
    DropResponses,
    /// [`Mode::DropResponses`] for the next `n` answers, then [`Mode::Pass`].
    DropNext(u32),
    /// Flips one bit in each of the next `n` large chunks (4 KiB or more) going to the
    /// client, inside the body of a large answer, then [`Mode::Pass`].
    FlipNext(u32),
}

/// Counters since the proxy started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted, refused ones included.
    pub connections: u64,
    /// Connections closed without being forwarded: cut, no upstream, or the upstream
    /// could not be reached.
    pub refused: u64,
    /// Bytes forwarded from clients to the upstream.
    pub bytes_to_upstream: u64,
    /// Bytes forwarded from the upstream to clients.
    pub bytes_to_client: u64,
    /// Answers discarded by [`Mode::DropResponses`] or [`Mode::DropNext`].
    pub responses_dropped: u64,
    /// Bits flipped by [`Mode::FlipNext`].
    pub bits_flipped: u64,
}

/// A handle to a running proxy; clones share it.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    /// Aborts the accept loop, and with it every connection, when the last handle goes.
    _stop: Arc<AbortOnDrop>,
}

struct Shared {
    addr: SocketAddr,
    /// A std `Mutex`: held only to copy the address, never across an await.
    upstream: Mutex<Option<SocketAddr>>,
    /// A watch channel rather than a mutex: open connections wait on it to close the
    /// moment a cut starts, and [`Mode::DropNext`] counts down under its lock.
    state: watch::Sender<State>,
    stats: Counters,
}

#[derive(Clone, Copy, Debug)]
struct State {
    mode: Mode,
    /// How many times the mode was set to [`Mode::Cut`]. A connection closes when this
    /// moves, so even a cut undone before the connection task runs still closes it.
    cuts: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    refused: AtomicU64,
    bytes_to_upstream: AtomicU64,
    bytes_to_client: AtomicU64,
    responses_dropped: AtomicU64,
    bits_flipped: AtomicU64,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Proxy {
    /// Listens on a free port of `127.0.0.1`, in [`Mode::Pass`], with no upstream yet.
    pub async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (state, _) = watch::channel(State { mode: Mode::Pass, cuts: 0 });
        let shared = Arc::new(Shared { addr, upstream: Mutex::new(None), state, stats: Counters::default() });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Proxy { shared, _stop: Arc::new(AbortOnDrop(accept)) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Where new connections go from now on; open ones keep their upstream.
    pub fn set_upstream(&self, addr: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = Some(addr);
    }

    /// New connections are closed at once until an upstream is set again.
    pub fn clear_upstream(&self) {
        *self.shared.upstream.lock().unwrap() = None;
    }

    pub fn upstream(&self) -> Option<SocketAddr> {
        *self.shared.upstream.lock().unwrap()
    }

    pub fn set_mode(&self, mode: Mode) {
        let mode = if mode == Mode::DropNext(0) || mode == Mode::FlipNext(0) { Mode::Pass } else { mode };
        self.shared.state.send_modify(|state| {
            state.mode = mode;
            if mode == Mode::Cut {
                state.cuts += 1;
            }
        });
    }

    /// The current mode; [`Mode::DropNext`] shows how many answers it still drops.
    pub fn mode(&self) -> Mode {
        self.shared.state.borrow().mode
    }

    pub fn stats(&self) -> ProxyStats {
        let stats = &self.shared.stats;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ProxyStats {
            connections: read(&stats.connections),
            refused: read(&stats.refused),
            bytes_to_upstream: read(&stats.bytes_to_upstream),
            bytes_to_client: read(&stats.bytes_to_client),
            responses_dropped: read(&stats.responses_dropped),
            bits_flipped: read(&stats.bits_flipped),
        }
    }
}

/// Which way a chunk travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    ToUpstream,
    ToClient,
}

/// What to do with a chunk just read.
enum Action {
    Forward,
    /// Forward it with one bit flipped.
    Flip,
    Delay(Duration),
    /// Discard it as a lost answer and close the connection.
    Drop,
    Close,
}

/// How one direction of a connection ended.
#[derive(PartialEq, Eq)]
enum End {
    /// The sender finished; the receiver was told so and the other direction goes on.
    Eof,
    /// An I/O error or the proxy's decision: the whole connection closes.
    Close,
}

impl Shared {
    fn upstream(&self) -> Option<SocketAddr> {
        *self.upstream.lock().unwrap()
    }

    fn on_chunk(&self, direction: Direction, len: usize) -> Action {
        let mut action = Action::Forward;
        // Under the watch lock, so concurrent connections never drop more than DropNext allows.
        self.state.send_if_modified(|state| match (state.mode, direction) {
            (Mode::Pass, _) | (Mode::DropResponses | Mode::DropNext(_) | Mode::FlipNext(_), Direction::ToUpstream) => {
                false
            }
            (Mode::FlipNext(_), Direction::ToClient) if len < 4096 => false,
            (Mode::FlipNext(left), Direction::ToClient) => {
                action = Action::Flip;
                state.mode = if left > 1 { Mode::FlipNext(left - 1) } else { Mode::Pass };
                true
            }
            (Mode::Cut, _) => {
                action = Action::Close;
                false
            }
            (Mode::Delay(delay), _) => {
                action = Action::Delay(delay);
                false
            }
            (Mode::DropResponses, Direction::ToClient) => {
                action = Action::Drop;
                false
            }
            (Mode::DropNext(left), Direction::ToClient) => {
                action = Action::Drop;
                state.mode = if left > 1 { Mode::DropNext(left - 1) } else { Mode::Pass };
                true
            }
        });
        action
    }

    fn bytes(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::ToUpstream => &self.stats.bytes_to_upstream,
            Direction::ToClient => &self.stats.bytes_to_client,
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owned by this task, so aborting it aborts every connection too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    connections.spawn(serve(client, shared.clone()));
                }
                // Out of file descriptors and the like: let some connections finish.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve(client: TcpStream, shared: Arc<Shared>) {
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    let mut state = shared.state.subscribe();
    let State { mode, cuts } = *state.borrow_and_update();
    let cut = async move {
        // An error means the proxy is gone; the connection closes either way.
        let _ = state.wait_for(|state| state.cuts != cuts).await;
    };
    let forward = async {
        if mode == Mode::Cut {
            return false;
        }
        let Some(addr) = shared.upstream() else { return false };
        let Ok(upstream) = TcpStream::connect(addr).await else { return false };
        relay(client, upstream, &shared).await;
        true
    };
    let forwarded = tokio::select! {
        forwarded = forward => forwarded,
        () = cut => true,
    };
    if !forwarded {
        shared.stats.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// Pumps both directions until both have ended, or until one closes the connection.
async fn relay(client: TcpStream, upstream: TcpStream, shared: &Shared) {
    // Small HTTP messages must not wait for Nagle; a failure only costs latency.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let requests = pump(client_read, upstream_write, Direction::ToUpstream, shared);
    let answers = pump(upstream_read, client_write, Direction::ToClient, shared);
    tokio::pin!(requests, answers);
    let (mut requests_done, mut answers_done) = (false, false);
    while !(requests_done && answers_done) {
        let end = tokio::select! {
            end = &mut requests, if !requests_done => {
                requests_done = true;
                end
            }
            end = &mut answers, if !answers_done => {
                answers_done = true;
                end
            }
        };
        if end == End::Close {
            return;
        }
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, direction: Direction, shared: &Shared) -> End {
    let mut buf = vec![0; CHUNK];
    loop {
        let len = match from.read(&mut buf).await {
            Ok(0) => {
                // Pass the half-close on: the other direction may still carry an answer.
                let _ = to.shutdown().await;
                return End::Eof;
            }
            Ok(len) => len,
            Err(_) => return End::Close,
        };
        match shared.on_chunk(direction, len) {
            Action::Forward => {}
            Action::Flip => {
                buf[len - 1] ^= 0x01;
                shared.stats.bits_flipped.fetch_add(1, Ordering::Relaxed);
            }
            Action::Delay(delay) => tokio::time::sleep(delay).await,
            Action::Drop => {
                shared.stats.responses_dropped.fetch_add(1, Ordering::Relaxed);
                return End::Close;
            }
            Action::Close => return End::Close,
        }
        if to.write_all(&buf[..len]).await.is_err() {
            return End::Close;
        }
        shared.bytes(direction).fetch_add(len as u64, Ordering::Relaxed);
    }
}

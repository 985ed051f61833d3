//! Plain reads pipelined to a node: a few connections per node ("lanes"), each owned by
//! a task that writes every request waiting for it in one write and reads the answers
//! back in order, so the socket calls of many clients' reads are shared.
//!
//! Only reads that a node answers at once are sent this way (one user's GET without a
//! write token), so a slow answer cannot hold the ones behind it. A read a lane could
//! not answer (the connection closed, broke or stalled, or the lane is full) is handed
//! back as `Lost` and sent the ordinary way: a read may be sent twice, a write never
//! goes through a lane.

use super::wire::{encode_request, parse_answer, Answer, Parsed};
use axum::http::Method;
use prometheus::IntCounter;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Requests waiting for a lane, and written but unanswered, per lane.
const MAX_QUEUED: usize = 256;
/// Bytes of requests written in one call at most.
const MAX_WRITE: usize = 64 << 10;

/// A read the lane could not answer; send it the ordinary way.
#[derive(Debug)]
pub(super) struct Lost;

/// Counts of what the lanes did.
#[derive(Clone)]
pub(super) struct PipeCounters {
    /// Reads answered through a lane.
    pub answered: IntCounter,
    /// Writes of requests to a node (each carries one or more).
    pub writes: IntCounter,
    /// Reads handed back to be sent the ordinary way.
    pub lost: IntCounter,
}

struct Job {
    request: Vec<u8>,
    reply: oneshot::Sender<Result<Answer, Lost>>,
}

struct Waiting {
    reply: oneshot::Sender<Result<Answer, Lost>>,
    since: Instant,
}

/// The lanes to one node, each the way into its task.
type Lanes = Arc<Vec<Mutex<mpsc::Sender<Job>>>>;

/// The lanes to every node.
pub(super) struct Pipes {
    lanes: Mutex<HashMap<String, Lanes>>,
    per_node: usize,
    next: AtomicUsize,
    stall: Duration,
    connect_timeout: Duration,
    counters: PipeCounters,
}

impl Pipes {
    /// `per_node` lanes to each node (none when 0); a lane whose oldest answer is
    /// `stall` late is closed and its reads sent the ordinary way.
    pub(super) fn new(per_node: usize, stall: Duration, connect_timeout: Duration, counters: PipeCounters) -> Pipes {
        Pipes {
            lanes: Mutex::new(HashMap::new()),
            per_node,
            next: AtomicUsize::new(0),
            stall,
            connect_timeout,
            counters,
        }
    }

    /// Sends GET `path` to the node at `authority` through one of its lanes; `Lost`
    /// when no lane took it or the lane could not answer it.
    pub(super) async fn get(&self, authority: &str, path: &str) -> Result<Answer, Lost> {
        if self.per_node == 0 {
            return Err(Lost);
        }
        let request = encode_request(&Method::GET, authority, path, None, &[]);
        let (reply, answer) = oneshot::channel();
        let lanes = {
            let mut all = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            match all.get(authority) {
                Some(lanes) => lanes.clone(),
                None => {
                    let lanes: Lanes =
                        Arc::new((0..self.per_node).map(|_| Mutex::new(self.start(authority))).collect());
                    all.insert(authority.to_string(), lanes.clone());
                    lanes
                }
            }
        };
        let lane = &lanes[self.next.fetch_add(1, Ordering::Relaxed) % lanes.len()];
        let sender = {
            let mut sender = lane.lock().unwrap_or_else(|p| p.into_inner());
            if sender.is_closed() {
                *sender = self.start(authority);
            }
            sender.clone()
        };
        if sender.try_send(Job { request, reply }).is_err() {
            self.counters.lost.inc();
            return Err(Lost);
        }
        let answered = answer.await.unwrap_or(Err(Lost));
        match &answered {
            Ok(_) => self.counters.answered.inc(),
            Err(Lost) => self.counters.lost.inc(),
        }
        answered
    }

    fn start(&self, authority: &str) -> mpsc::Sender<Job> {
        let (sender, jobs) = mpsc::channel(MAX_QUEUED);
        let lane = Lane {
            authority: authority.to_string(),
            stall: self.stall,
            connect_timeout: self.connect_timeout,
            writes: self.counters.writes.clone(),
        };
        tokio::spawn(lane.run(jobs));
        sender
    }
}

struct Lane {
    authority: String,
    stall: Duration,
    connect_timeout: Duration,
    writes: IntCounter,
}

impl Lane {
    /// Serves jobs until every sender is gone: one connection at a time, a new one made
    /// for the next job after one breaks.
    async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(first) = jobs.recv().await {
            let connected = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.authority)).await;
            let Ok(Ok(stream)) = connected else {
                let _ = first.reply.send(Err(Lost));
                continue;
            };
            let _ = stream.set_nodelay(true);
            self.carry(stream, first, &mut jobs).await;
        }
    }

    /// Carries jobs over `stream` until it closes or breaks; every job not answered on
    /// it is handed back `Lost`.
    async fn carry(&self, mut stream: TcpStream, first: Job, jobs: &mut mpsc::Receiver<Job>) {
        let mut waiting: VecDeque<Waiting> = VecDeque::new();
        let mut out = Vec::with_capacity(8 << 10);
        let mut buf = Vec::with_capacity(16 << 10);
        let mut next = Some(first);
        loop {
            if let Some(job) = next.take() {
                // Lets the request tasks that are ready run first, so that the reads
                // they are about to send go in this same write.
                tokio::task::yield_now().await;
                out.clear();
                let now = Instant::now();
                let mut job = Some(job);
                while let Some(j) = job.take() {
                    out.extend_from_slice(&j.request);
                    waiting.push_back(Waiting { reply: j.reply, since: now });
                    if waiting.len() < MAX_QUEUED && out.len() < MAX_WRITE {
                        job = jobs.try_recv().ok();
                    }
                }
                self.writes.inc();
                if stream.write_all(&out).await.is_err() {
                    break;
                }
            }
            let stalled = waiting.front().map(|w| w.since + self.stall);
            tokio::select! {
                read = stream.read_buf(&mut buf) => {
                    match read {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if !self.answer(&mut buf, &mut waiting) {
                        break;
                    }
                    if buf.capacity() - buf.len() < 4096 {
                        buf.reserve(16 << 10);
                    }
                }
                job = jobs.recv(), if waiting.len() < MAX_QUEUED => match job {
                    Some(job) => next = Some(job),
                    None if waiting.is_empty() => return,
                    None => {}
                },
                _ = tokio::time::sleep_until(stalled.unwrap_or_else(Instant::now)), if stalled.is_some() => break,
            }
        }
        for w in waiting {
            let _ = w.reply.send(Err(Lost));
        }
    }

    /// Hands out every whole answer in `buf`, oldest request first; false when the
    /// connection cannot carry more (a malformed answer, an answer nobody asked for, or
    /// one that closes the connection).
    fn answer(&self, buf: &mut Vec<u8>, waiting: &mut VecDeque<Waiting>) -> bool {
        let mut start = 0;
        let mut keep = true;
        while keep && start < buf.len() {
            match parse_answer(&buf[start..], false, false) {
                Ok(Parsed::More) => break,
                Ok(Parsed::Done(answer, more, used)) => {
                    let Some(w) = waiting.pop_front() else { return false };
                    let _ = w.reply.send(Ok(answer));
                    start += used;
                    keep = more;
                }
                Err(_) => return false,
            }
        }
        buf.drain(..start);
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn counters() -> PipeCounters {
        let c = || IntCounter::new("c", "c").unwrap();
        PipeCounters { answered: c(), writes: c(), lost: c() }
    }

    /// A node that answers each request with its own path, in order, the answers of
    /// everything read so far in one write; it closes a connection after `answers`
    /// answers and counts the connections it took.
    async fn node(answers: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut buf, mut answered) = (Vec::new(), 0);
                    while answered < answers {
                        if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut out = Vec::new();
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8(buf.drain(..end + 4).collect()).unwrap();
                            let path = head.split(' ').nth(1).unwrap().to_string();
                            out.extend_from_slice(
                                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}", path.len()).as_bytes(),
                            );
                            answered += 1;
                            if answered == answers {
                                break;
                            }
                        }
                        stream.write_all(&out).await.unwrap();
                    }
                });
            }
        });
        (authority, connections)
    }

    #[tokio::test]
    async fn many_reads_share_one_connection_and_each_gets_its_own_answer() {
        let (authority, connections) = node(usize::MAX).await;
        let c = counters();
        let pipes = Arc::new(Pipes::new(1, Duration::from_secs(5), Duration::from_secs(1), c.clone()));
        let reads: Vec<_> = (0..200)
            .map(|i| {
                let (pipes, authority) = (pipes.clone(), authority.clone());
                tokio::spawn(async move { (i, pipes.get(&authority, &format!("/r/{i}")).await) })
            })
            .collect();
        for read in reads {
            let (i, answer) = read.await.unwrap();
            assert_eq!(answer.unwrap().body, format!("/r/{i}").into_bytes(), "read {i}");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        assert_eq!(c.answered.get(), 200);
        assert!(c.writes.get() < 200, "requests were written together: {} writes", c.writes.get());
    }

    #[tokio::test]
    async fn reads_a_closed_connection_did_not_answer_are_handed_back_and_the_lane_reconnects() {
        let (authority, connections) = node(3).await;
        let c = counters();
        let pipes = Arc::new(Pipes::new(1, Duration::from_secs(5), Duration::from_secs(1), c.clone()));
        let reads: Vec<_> = (0..5)
            .map(|i| {
                let (pipes, authority) = (pipes.clone(), authority.clone());
                tokio::spawn(async move { pipes.get(&authority, &format!("/r/{i}")).await })
            })
            .collect();
        let mut answered = 0;
        for read in reads {
            if read.await.unwrap().is_ok() {
                answered += 1;
            }
        }
        assert!(answered <= 3, "no more answers than the node gave");
        assert_eq!(c.lost.get() + c.answered.get(), 5, "every read answered or handed back");
        let again = pipes.get(&authority, "/again").await.unwrap();
        assert_eq!(&again.body[..], b"/again");
        assert!(connections.load(Ordering::SeqCst) >= 2, "a new connection after the close");
    }

    #[tokio::test]
    async fn a_stalled_node_hands_its_reads_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        // Takes connections and never answers.
        let held = tokio::spawn(async move {
            let mut streams = Vec::new();
            loop {
                streams.push(listener.accept().await.unwrap().0);
            }
        });
        let pipes = Pipes::new(1, Duration::from_millis(200), Duration::from_secs(1), counters());
        assert!(pipes.get(&authority, "/r").await.is_err(), "handed back after the stall");
        held.abort();
    }

    #[tokio::test]
    async fn a_node_that_takes_no_connection_hands_the_read_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        drop(listener);
        let pipes = Pipes::new(2, Duration::from_secs(1), Duration::from_secs(1), counters());
        assert!(pipes.get(&authority, "/r").await.is_err());
        let none = Pipes::new(0, Duration::from_secs(1), Duration::from_secs(1), counters());
        assert!(none.get(&authority, "/r").await.is_err(), "no lanes: every read goes the ordinary way");
    }
}

//! One connection's life under deadlines. The socket is wrapped so that reads and writes leave
//! timestamps ([`Activity`]); a watchdog in the connection's own task closes it when a request
//! head takes longer than `header_timeout_ms`, when it sits idle past `idle_timeout_ms`, or when
//! the client stops reading a response for `write_timeout_ms`. hyper's own header timeout is not
//! used: in hyper 1 it also runs while a keep-alive connection waits for its next request, which
//! would make the idle timeout equal the header timeout.
//!
//! The watchdog wakes on a coarse tick (half the shortest deadline), so a deadline is enforced
//! within 1.5x its setting at no per-request timer cost.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::limits::ServerLimits;

const NONE: u64 = u64::MAX;

/// Milliseconds since a process-wide epoch (cheap to store in an atomic).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What a connection did last, shared by its socket wrapper, its requests and its watchdog.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// When the bytes of a request head started arriving (or the connection opened), while no
    /// request is being served; `NONE` otherwise.
    head_started: AtomicU64,
    /// When the last request finished (or the connection opened).
    last_done: AtomicU64,
    /// When a write first found the socket full; `NONE` while writes go through.
    write_blocked: AtomicU64,
    /// Set once the client sent the whole HTTP/2 preface (heads are then framed by h2, not
    /// timed here).
    h2: AtomicBool,
    /// Bytes of the preface matched so far; `usize::MAX` once the client is known not to speak
    /// HTTP/2 (a single "P" decides nothing).
    preface_matched: AtomicUsize,
    /// When a write last went through (a connection sending a long answer is not a slow head).
    last_write: AtomicU64,
}

/// Why the watchdog closed a connection (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    Header,
    Idle,
    Write,
}

impl Expiry {
    pub fn as_str(self) -> &'static str {
        match self {
            Expiry::Header => "header_timeout",
            Expiry::Idle => "idle_timeout",
            Expiry::Write => "write_timeout",
        }
    }
}

impl Activity {
    pub fn new() -> Arc<Self> {
        let now = now_ms();
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            head_started: AtomicU64::new(now),
            last_done: AtomicU64::new(now),
            write_blocked: AtomicU64::new(NONE),
            h2: AtomicBool::new(false),
            preface_matched: AtomicUsize::new(0),
            last_write: AtomicU64::new(NONE),
        })
    }

    /// Called by the service when a request's head is complete; the guard marks its end.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
        RequestGuard(Arc::clone(self))
    }

    /// Whether the client spoke HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    fn on_read(&self, bytes: &[u8]) {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let matched = self.preface_matched.load(Ordering::Relaxed);
        if matched < PREFACE.len() {
            let n = bytes.len().min(PREFACE.len() - matched);
            if bytes[..n] == PREFACE[matched..matched + n] {
                self.preface_matched.store(matched + n, Ordering::Relaxed);
                if matched + n == PREFACE.len() {
                    self.h2.store(true, Ordering::Relaxed);
                }
            } else {
                self.preface_matched.store(usize::MAX, Ordering::Relaxed);
            }
        }
        if self.in_flight.load(Ordering::Acquire) == 0 && self.head_started.load(Ordering::Acquire) == NONE {
            self.head_started.store(now_ms(), Ordering::Release);
        }
    }

    fn on_write(&self, blocked: bool) {
        if !blocked {
            self.last_write.store(now_ms(), Ordering::Relaxed);
        }
        let current = self.write_blocked.load(Ordering::Relaxed);
        if blocked && current == NONE {
            self.write_blocked.store(now_ms(), Ordering::Relaxed);
        } else if !blocked && current != NONE {
            self.write_blocked.store(NONE, Ordering::Relaxed);
        }
    }

    /// The deadline this connection has passed at `now`, if any.
    pub fn expired(&self, limits: &ServerLimits, now: u64) -> Option<Expiry> {
        let past = |since: u64, limit: Duration| since != NONE && now.saturating_sub(since) > limit.as_millis() as u64;
        if past(self.write_blocked.load(Ordering::Relaxed), limits.write_timeout()) {
            return Some(Expiry::Write);
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let h2 = self.h2.load(Ordering::Relaxed);
        // A byte of a pipelined request that arrives while a long answer is still being written
        // starts no header clock until the writing stops.
        let writing = !past(self.last_write.load(Ordering::Relaxed), limits.header_timeout())
            && self.last_write.load(Ordering::Relaxed) != NONE;
        if !h2 && !writing && past(self.head_started.load(Ordering::Acquire), limits.header_timeout()) {
            return Some(Expiry::Header);
        }
        let waiting_for_head = !h2 && self.head_started.load(Ordering::Acquire) != NONE;
        if !waiting_for_head && past(self.last_done.load(Ordering::Acquire), limits.idle_timeout()) {
            return Some(Expiry::Idle);
        }
        None
    }
}

/// Marks one request in flight on its connection.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.last_done.store(now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How often a connection's watchdog looks at its [`Activity`].
pub fn tick(limits: &ServerLimits) -> Duration {
    let shortest = limits.header_timeout().min(limits.idle_timeout()).min(limits.write_timeout());
    (shortest / 2).max(Duration::from_millis(50))
}

/// Milliseconds on the watchdog's clock.
pub fn clock() -> u64 {
    now_ms()
}

/// A TCP stream that reports its reads and writes to an [`Activity`].
pub struct TrackedStream {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl TrackedStream {
    pub fn new(inner: TcpStream, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
        {
            self.activity.on_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.activity.on_write(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.on_write(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ServerLimits {
        ServerLimits { header_timeout_ms: 100, idle_timeout_ms: 1000, write_timeout_ms: 200, ..Default::default() }
    }

    #[test]
    fn a_head_that_takes_too_long_expires_but_a_request_in_flight_never_does() {
        let a = Activity::new();
        let t0 = clock();
        assert_eq!(a.expired(&limits(), t0 + 50), None);
        assert_eq!(a.expired(&limits(), t0 + 150), Some(Expiry::Header), "a connection that sends no head");
        let guard = a.request_started();
        assert_eq!(a.expired(&limits(), t0 + 5_000), None, "a request being served is timed by its handler");
        drop(guard);
        let done = clock();
        assert_eq!(a.expired(&limits(), done + 500), None, "idle, within the idle timeout");
        assert_eq!(a.expired(&limits(), done + 1_500), Some(Expiry::Idle));
        a.on_read(b"POST /v2");
        let started = clock();
        assert_eq!(a.expired(&limits(), started + 150), Some(Expiry::Header), "a trickled head");
    }

    #[test]
    fn one_byte_of_the_preface_does_not_make_a_connection_http2() {
        let a = Activity::new();
        a.on_read(b"P");
        a.on_read(b"OST /v2");
        assert!(!a.is_h2(), "POST shares its first byte with the preface");
        assert_eq!(a.expired(&limits(), clock() + 150), Some(Expiry::Header), "still timed as a head");
        let b = Activity::new();
        b.on_read(b"PRI * HTTP/2.0\r\n");
        assert!(!b.is_h2(), "not until the whole preface");
        b.on_read(b"\r\nSM\r\n\r\n");
        assert!(b.is_h2());
    }

    #[test]
    fn http2_connections_are_not_timed_on_heads_and_blocked_writes_expire() {
        let a = Activity::new();
        a.on_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let t0 = clock();
        assert_eq!(a.expired(&limits(), t0 + 500), None, "h2 pings and frames are not a slow head");
        assert_eq!(a.expired(&limits(), t0 + 1_500), Some(Expiry::Idle));
        let b = Activity::new();
        let _guard = b.request_started();
        b.on_write(true);
        let blocked = clock();
        assert_eq!(b.expired(&limits(), blocked + 100), None);
        assert_eq!(b.expired(&limits(), blocked + 300), Some(Expiry::Write), "a client that stopped reading");
        b.on_write(false);
        assert_eq!(b.expired(&limits(), blocked + 300), None);
    }
}

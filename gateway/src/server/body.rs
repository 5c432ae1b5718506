//! Reading request bodies under three bounds: a size limit per request, a deadline on the read,
//! and a server-wide budget of body bytes held at once. Bytes are charged as they arrive, so a
//! client that declares a large body and trickles it holds only what it has sent. A body that
//! would pass the budget is refused at once (never waiting, so partial bodies cannot deadlock
//! each other) and its rest is read and dropped, as nginx's lingering close does, so the client
//! reads its 503 instead of a broken pipe.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderMap};

use super::ApiError;

/// Body bytes held by every request being read or served, against `max_in_flight_bytes`.
#[derive(Debug)]
pub struct ByteBudget {
    held: AtomicUsize,
    max: usize,
}

/// Bytes charged to a [`ByteBudget`]; given back when dropped (after the answer is built).
#[derive(Debug)]
pub struct BytesHeld {
    budget: Arc<ByteBudget>,
    n: usize,
}

impl ByteBudget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { held: AtomicUsize::new(0), max })
    }

    /// Bytes held now (a gauge for metrics and tests).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Charges `n` bytes already received another way (a gRPC message), or refuses.
    pub fn charge(self: &Arc<Self>, n: usize) -> Result<BytesHeld, ApiError> {
        let mut held = self.empty();
        held.grow(n)?;
        Ok(held)
    }

    fn empty(self: &Arc<Self>) -> BytesHeld {
        BytesHeld { budget: Arc::clone(self), n: 0 }
    }
}

impl BytesHeld {
    /// Charges `n` more bytes, or refuses (charging nothing) when the budget would be passed.
    pub fn grow(&mut self, n: usize) -> Result<(), ApiError> {
        let before = self.budget.held.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.budget.max {
            self.budget.held.fetch_sub(n, Ordering::AcqRel);
            return Err(ApiError::BytesOverloaded { max: self.budget.max });
        }
        self.n += n;
        Ok(())
    }
}

impl Drop for BytesHeld {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// How one body may be read.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// Largest body of this request (413 beyond it).
    pub max_bytes: usize,
    /// Deadline on the whole read (408 beyond it).
    pub timeout: Duration,
    /// The whole request's deadline and `request_timeout_ms`, when this read must also end by
    /// it (504 beyond it, when it comes first): for a route that bounds its own time.
    pub request_deadline: Option<(tokio::time::Instant, u64)>,
}

/// Reads the whole body within `limits`, charging `budget` as bytes arrive. The returned
/// [`BytesHeld`] keeps them charged until the caller drops it.
pub async fn read(
    headers: &HeaderMap,
    body: Incoming,
    limits: BodyLimits,
    budget: &Arc<ByteBudget>,
) -> Result<(Bytes, BytesHeld), ApiError> {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if let Some(n) = declared.filter(|n| *n > limits.max_bytes) {
        return Err(ApiError::BodyTooLarge { given: n.to_string(), limit: limits.max_bytes });
    }
    let mut held = budget.empty();
    let body_deadline = tokio::time::Instant::now() + limits.timeout;
    // The sooner deadline, and the answer when it passes.
    let (until, cut) = match limits.request_deadline {
        Some((at, after_ms)) if at < body_deadline => (at, ApiError::RequestTimeout { after_ms }),
        _ => (body_deadline, ApiError::BodyTimeout { after_ms: limits.timeout.as_millis() as u64 }),
    };
    match tokio::time::timeout_at(until, collect(body, limits.max_bytes, declared, &mut held)).await {
        Ok(Ok(bytes)) => Ok((bytes, held)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(cut),
    }
}

async fn collect(
    mut body: Incoming,
    limit: usize,
    declared: Option<usize>,
    held: &mut BytesHeld,
) -> Result<Bytes, ApiError> {
    // One frame (the usual case for small bodies) is returned as is, without a copy.
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(ApiError::BodyTooLarge { given: "more".into(), limit });
        }
        if let Err(refused) = held.grow(data.len()) {
            // Read the rest without keeping it, so the client (still sending) gets the 503
            // instead of a broken pipe; the body deadline and size limit still apply.
            drop((first.take(), rest.take()));
            discard(body, limit.saturating_sub(total)).await;
            return Err(refused);
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                // Reserve from what arrived, not from what was declared: a client that declares
                // 64 MiB and sends two frames must not make the gateway reserve 64 MiB.
                let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).clamp(total, limit).min(total * 4));
                buf.extend_from_slice(head);
                buf.extend_from_slice(&data);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    Ok(match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        (Some(one), None) => one,
        (None, None) => Bytes::new(),
    })
}

/// Reads and drops the rest of a body, at most `budget` bytes more.
async fn discard(mut body: Incoming, mut budget: usize) {
    while let Some(Ok(frame)) = body.frame().await {
        let n = frame.data_ref().map_or(0, Bytes::len);
        if n > budget {
            return;
        }
        budget -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_past_its_max_and_gives_back_on_drop() {
        let budget = ByteBudget::new(100);
        let mut a = budget.empty();
        a.grow(60).unwrap();
        let mut b = budget.empty();
        assert!(matches!(b.grow(50), Err(ApiError::BytesOverloaded { max: 100 })));
        assert_eq!(budget.held(), 60, "a refused charge holds nothing");
        b.grow(40).unwrap();
        assert_eq!(budget.held(), 100);
        drop(a);
        assert_eq!(budget.held(), 40);
        drop(b);
        assert_eq!(budget.held(), 0);
    }
}

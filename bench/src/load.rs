//! Closed-loop HTTP load: N connections, each sending its next request as soon as the previous
//! answer arrives; warm-up, then a measured window recorded in hdrhistograms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::summary::{Summary, new_histogram};

/// What to send and how.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// `host:port` of the gateway.
    pub addr: String,
    pub model: String,
    pub features: usize,
    pub rows: usize,
    pub concurrency: usize,
    pub binary: bool,
    pub http2: bool,
    pub warmup: Duration,
    pub duration: Duration,
    /// GET this path instead of inferring: measures the HTTP floor (e.g. `/v2/health/live`).
    pub get: Option<String>,
    /// Open loop: send at this many requests per second regardless of answers, over
    /// `concurrency` connections, and measure latency from each request's intended send time
    /// (so queueing in the client is charged to the server, no coordinated omission).
    pub rate: Option<f64>,
}

/// A request body and its `Inference-Header-Content-Length`, built once and reused.
struct Payload {
    body: Bytes,
    header_length: Option<usize>,
}

fn payload(spec: &LoadSpec) -> Payload {
    let mut rng = fastrand::Rng::with_seed(7);
    let data: Vec<f32> = (0..spec.rows * spec.features).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let shape = [spec.rows, spec.features];
    if spec.binary {
        let header = serde_json::json!({
            "inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": data.len() * 4}}],
            "outputs": [{"name": "output", "parameters": {"binary_data": true}}]
        });
        let mut body = serde_json::to_vec(&header).unwrap_or_default();
        let header_length = body.len();
        body.extend(data.iter().flat_map(|f| f.to_le_bytes()));
        Payload { body: body.into(), header_length: Some(header_length) }
    } else {
        let body = crate::hotpath::json_infer_body(&shape, &data);
        Payload { body: body.into_bytes().into(), header_length: None }
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn connect(addr: &str, http2: bool) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        if http2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(Sender::H1(sender))
        }
    }

    /// Sends one request; returns the answer's status.
    async fn send(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<u16> {
        let response = match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok(status)
    }
}

/// Runs the load (closed loop, or open loop with `rate`) and summarises the measured window.
pub async fn run(spec: &LoadSpec) -> anyhow::Result<Summary> {
    match spec.rate {
        Some(rate) => run_open(spec, rate).await,
        None => run_closed(spec).await,
    }
}

/// Builds one request of the spec.
fn request(uri: &hyper::Uri, host: &str, payload: &Payload, get: bool) -> anyhow::Result<Request<Full<Bytes>>> {
    if get {
        return Ok(Request::get(uri.clone()).header("host", host).body(Full::new(Bytes::new()))?);
    }
    let mut req = Request::post(uri.clone()).header("host", host).header("content-type", "application/json");
    if let Some(n) = payload.header_length {
        req = req.header("inference-header-content-length", n);
    }
    Ok(req.body(Full::new(payload.body.clone()))?)
}

/// Open loop: a dispatcher releases intended send times at `rate`; a pool of connections takes
/// them in order; latency counts from the intended time.
async fn run_open(spec: &LoadSpec, rate: f64) -> anyhow::Result<Summary> {
    let payload = Arc::new(payload(spec));
    let path = spec.get.clone().unwrap_or_else(|| format!("/v2/models/{}/infer", spec.model));
    let uri: hyper::Uri = format!("http://{}{path}", spec.addr).parse()?;
    let get = spec.get.is_some();
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..spec.concurrency.max(1) {
        let mut sender = Sender::connect(&spec.addr, spec.http2).await?;
        let (rx, payload, uri, host) = (Arc::clone(&rx), Arc::clone(&payload), uri.clone(), spec.addr.clone());
        workers.push(tokio::spawn(async move {
            let (mut hist, mut errors) = (new_histogram(), std::collections::BTreeMap::<String, u64>::new());
            loop {
                let Some(intended) = rx.lock().await.recv().await else { break };
                let status = sender.send(request(&uri, &host, &payload, get)?).await.unwrap_or(0);
                if intended >= measure_from {
                    if status == 200 {
                        hist.record(intended.elapsed().as_nanos() as u64).ok();
                    } else {
                        *errors.entry(status.to_string()).or_insert(0) += 1;
                    }
                }
            }
            anyhow::Ok((hist, errors))
        }));
    }
    // Release intended times from a plain thread that sleeps until each: tokio's timer has
    // millisecond granularity, which would be charged to the server; a thread sleep overshoots
    // by the kernel's timer slack (~50 µs), the imprecision left in open-loop numbers. No
    // spinning: on a one-core client it would starve the connections.
    let interval = Duration::from_secs_f64(1.0 / rate);
    let dispatcher = std::thread::spawn(move || {
        let mut i: u32 = 0;
        loop {
            let intended = start + interval * i;
            if intended >= end {
                break;
            }
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            if tx.send(intended).is_err() {
                break;
            }
            i += 1;
        }
    });
    let _ = tokio::task::spawn_blocking(move || dispatcher.join()).await;
    summarise(workers, spec).await
}

/// Runs the closed loop and returns the measured window's summary.
async fn run_closed(spec: &LoadSpec) -> anyhow::Result<Summary> {
    let payload = Arc::new(payload(spec));
    let path = spec.get.clone().unwrap_or_else(|| format!("/v2/models/{}/infer", spec.model));
    let uri: hyper::Uri = format!("http://{}{path}", spec.addr).parse()?;
    let get = spec.get.is_some();
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let mut tasks = Vec::with_capacity(spec.concurrency);
    // HTTP/2 multiplexes every virtual user over one connection, as gRPC-style clients do.
    let shared_h2 = if spec.http2 { Some(Sender::connect(&spec.addr, true).await?) } else { None };
    for _ in 0..spec.concurrency {
        let mut sender = match &shared_h2 {
            Some(Sender::H2(s)) => Sender::H2(s.clone()),
            _ => Sender::connect(&spec.addr, false).await?,
        };
        let (payload, uri, host) = (Arc::clone(&payload), uri.clone(), spec.addr.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut errors = std::collections::BTreeMap::<String, u64>::new();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let req = if get {
                    Request::get(uri.clone()).header("host", &host).body(Full::new(Bytes::new()))?
                } else {
                    let mut req =
                        Request::post(uri.clone()).header("host", &host).header("content-type", "application/json");
                    if let Some(n) = payload.header_length {
                        req = req.header("inference-header-content-length", n);
                    }
                    req.body(Full::new(payload.body.clone()))?
                };
                let status = sender.send(req).await.unwrap_or(0);
                if t0 >= measure_from {
                    if status == 200 {
                        hist.record(t0.elapsed().as_nanos() as u64).ok();
                    } else {
                        *errors.entry(status.to_string()).or_insert(0) += 1;
                    }
                }
            }
            anyhow::Ok((hist, errors))
        }));
    }
    summarise(tasks, spec).await
}

/// What one connection measured: latencies and non-200 answers by status.
type Measured = (hdrhistogram::Histogram<u64>, std::collections::BTreeMap<String, u64>);

/// Merges the connections' measurements into one summary.
async fn summarise(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Measured>>>,
    spec: &LoadSpec,
) -> anyhow::Result<Summary> {
    let mut hist = new_histogram();
    let mut errors = std::collections::BTreeMap::<String, u64>::new();
    for task in tasks {
        let (h, e) = task.await.map_err(|e| anyhow!("load task failed: {e}"))??;
        hist.add(&h).ok();
        for (status, n) in e {
            *errors.entry(status).or_insert(0) += n;
        }
    }
    Ok(Summary::from_histogram(&hist, errors, spec.rows, spec.duration))
}

//! # Layout
//! `bench`: measurements of the gateway against in-process ONNX Runtime.
//! - [`load`]: closed-loop HTTP load generator (HTTP/1.1 or HTTP/2, JSON or binary tensors).
//! - [`inproc`]: the same model in this process (the physical limit).
//! - [`floor`]: a bare hyper server answering a fixed body (the HTTP exchange's physical limit).
//! - [`hotpath`]: gateway vs the floor server and in-process ORT with wrk, plus callgrind.
//! - [`compare`]: runs both side by side and writes the Markdown/JSON report.
//! - [`rollout`]: primary latency during hot swaps and with a full shadow; memory over swaps.
//! - [`sampling`]: throughput with sampling at 0/10/100% and drift on; tap drops.
//! - [`suite`]: all of the above plus sweep, knee, overload, batching off, perf_analyzer.
//! - [`procs`]: starting the gateway and measurement subprocesses, CPU pinning.
//! - [`peer`]: the Python peer (FastAPI + uvicorn + onnxruntime) measured beside the gateway.
//! - [`summary`]: hdrhistogram percentiles and throughput.

mod compare;
mod floor;
mod goals_plot;
mod hotpath;
mod inproc;
mod load;
mod peer;
mod procs;
mod rollout;
mod sampling;
mod suite;
mod summary;
mod tapcost;
mod triton;
mod verdicts;

use std::path::PathBuf;

/// The same allocator as the gateway binary, so the floor server is no slower for want of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Benchmarks for the Flywheel gateway.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Closed-loop load against a running gateway.
    Load {
        /// Gateway `host:port`.
        #[arg(long, default_value = "127.0.0.1:8000")]
        addr: String,
        #[arg(long, default_value = "tiny")]
        model: String,
        /// Features per row (the model's second input dimension).
        #[arg(long, default_value_t = 16)]
        features: usize,
        /// Rows per request.
        #[arg(long, default_value_t = 1)]
        rows: usize,
        /// Connections, each with one request in flight.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Send Triton binary tensors instead of JSON.
        #[arg(long)]
        binary: bool,
        /// HTTP/2 (prior knowledge) over one connection instead of HTTP/1.1 connections.
        #[arg(long)]
        http2: bool,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// GET this path instead of inferring, to measure the HTTP floor (e.g. /v2/health/live).
        #[arg(long)]
        get: Option<String>,
        /// Open loop at this many requests per second (latency from the intended send time);
        /// without it, closed loop.
        #[arg(long)]
        rate: Option<f64>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// In-process ONNX Runtime on one thread.
    Inproc {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 16)]
        features: usize,
        #[arg(long, default_value_t = 1)]
        rows: usize,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        #[arg(long)]
        json: bool,
    },
    /// Gateway vs in-process ONNX Runtime on the tiny and heavy models, one report.
    Compare {
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
        /// The "high" concurrency (and in-process batch size) compared.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Folder for the Markdown and JSON reports.
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
        /// Do not pin the load generator and the systems under test to separate CPUs.
        #[arg(long)]
        no_pin: bool,
    },
    /// Throughput and latency with sampling at 0%, 10% and 100% (drift detectors on).
    Sampling {
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long)]
        no_pin: bool,
    },
    /// Everything in one run (about 6 minutes; --quick about 3): compare, sweep + plot, knee,
    /// overload, batching off, perf_analyzer, swaps and shadow, sampling.
    Suite {
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
        /// Shorter windows, for a smoke run.
        #[arg(long)]
        quick: bool,
    },
    /// How often the rollout's quality verdict is wrong, on seeded synthetic label streams.
    Verdicts {
        /// Seeded runs per scenario.
        #[arg(long, default_value_t = 20)]
        runs: u64,
        /// Labelled canary rows after which a run counts as undecided.
        #[arg(long, default_value_t = 8000)]
        max_rows: u64,
    },
    /// The floor server: reads each POST body, answers a fixed JSON body (prints its address).
    Floor {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Size of the fixed answer in bytes.
        #[arg(long, default_value_t = 200)]
        response_bytes: usize,
    },
    /// The hot path's goal ratios in one run: gateway vs the floor server (wrk, tiny, c=64 and
    /// c=1), heavy vs in-process batch 64, instructions per request (callgrind).
    Hotpath {
        #[arg(long, default_value_t = 8)]
        duration: u64,
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Requests measured under callgrind per server (0 skips callgrind).
        #[arg(long, default_value_t = 2000)]
        callgrind_requests: usize,
        #[arg(long, default_value = "bench/results")]
        results: PathBuf,
        /// Measure this gateway binary instead of the one beside `bench`.
        #[arg(long)]
        gateway: Option<PathBuf>,
    },
    /// Primary latency during hot swaps and with a 100% shadow; memory after many swaps.
    Rollout {
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Pause between swaps while loading, in milliseconds.
        #[arg(long, default_value_t = 250)]
        swap_every_ms: u64,
        /// Swaps before the second memory reading.
        #[arg(long, default_value_t = 200)]
        memory_swaps: usize,
        #[arg(long)]
        no_pin: bool,
    },
}

fn print(summary: &summary::Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(summary)?);
    } else {
        println!("{}", summary.line());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let secs = Duration::from_secs_f64;
    match Cli::parse().command {
        Cmd::Load { addr, model, features, rows, concurrency, binary, http2, warmup, duration, get, rate, json } => {
            let spec = load::LoadSpec {
                addr,
                model,
                features,
                rows,
                concurrency,
                binary,
                http2,
                warmup: secs(warmup),
                duration: secs(duration),
                get,
                rate,
            };
            // Two client threads: enough to keep 64 connections busy on this size of machine.
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let summary = runtime.block_on(load::run(&spec))?;
            print(&summary, json)
        }
        Cmd::Inproc { model, features, rows, warmup, duration, json } => {
            let summary = inproc::run(&model, features, rows, secs(warmup), secs(duration))?;
            print(&summary, json)
        }
        Cmd::Compare { warmup, duration, concurrency, results, no_pin } => {
            let spec = compare::CompareSpec {
                warmup: secs(warmup),
                duration: secs(duration),
                high_concurrency: concurrency,
                results,
                pin: !no_pin,
            };
            println!("{}", compare::run(&spec)?);
            Ok(())
        }
        Cmd::Sampling { warmup, duration, concurrency, no_pin } => {
            let window = procs::Window { warmup: secs(warmup), duration: secs(duration) };
            println!("{}", sampling::run(window, concurrency, !no_pin)?);
            Ok(())
        }
        Cmd::Suite { results, quick } => {
            println!("{}", suite::run(&results, quick)?);
            Ok(())
        }
        Cmd::Floor { listen, response_bytes } => floor::serve(&listen, response_bytes),
        Cmd::Hotpath { duration, rounds, callgrind_requests, results, gateway } => {
            let spec = hotpath::HotpathSpec {
                duration: Duration::from_secs(duration),
                rounds,
                callgrind_requests,
                results,
                gateway,
            };
            println!("{}", hotpath::run(&spec)?);
            Ok(())
        }
        Cmd::Verdicts { runs, max_rows } => {
            println!("{}", verdicts::run(runs, max_rows));
            Ok(())
        }
        Cmd::Rollout { warmup, duration, concurrency, swap_every_ms, memory_swaps, no_pin } => {
            let spec = rollout::RolloutSpec {
                window: procs::Window { warmup: secs(warmup), duration: secs(duration) },
                concurrency,
                swap_every: Duration::from_millis(swap_every_ms),
                memory_swaps,
                pin: !no_pin,
            };
            println!("{}", rollout::run(&spec)?);
            Ok(())
        }
    }
}

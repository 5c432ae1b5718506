//! `gateway`: flags → config → telemetry → serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use flywheel_gateway::app::{Gateway, shutdown_signal};
use flywheel_gateway::config::{Config, Overrides};
use tracing_subscriber::EnvFilter;

/// Rust's allocations go through mimalloc: a request allocates and frees dozens of small
/// buffers, and glibc's malloc/free were ~17% of a tiny request's instructions (callgrind,
/// `bench hotpath`). ONNX Runtime's own allocations stay with its allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's option index of `purge_delay` (`mi_option_purge_delay` in `mimalloc.h`, the
/// same in its v2 and v3; the crate does not export the enum).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory stays committed for 10 s before mimalloc returns it to the kernel (jemalloc's
/// default decay; mimalloc's is 1 s), unless `MIMALLOC_PURGE_DELAY` says otherwise. At 100%
/// sampling the tap compresses each Parquet page into a fresh buffer and holds them for a row
/// group (~1.3 s at 50k rows/s): with a 1 s delay every page landed in memory the kernel had
/// just taken back and zeroed again (2 MB huge pages: ~a third of the tap thread's time).
#[allow(unsafe_code)]
fn keep_freed_memory_a_while() {
    // SAFETY: called first thing in `main`, before any other thread exists (mimalloc's option
    // setters are not thread-safe); `set_default` leaves an option the environment set alone.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, 10_000) }
}

/// Open Inference Protocol gateway over ONNX Runtime with dynamic batching.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML config file (see configs/).
    #[arg(long, env = "FLYWHEEL_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, overriding the config (port 0 picks a free port).
    #[arg(long, env = "FLYWHEEL_LISTEN")]
    listen: Option<SocketAddr>,
    /// gRPC listen address (Triton's port is 8001), overriding the config's `grpc_listen`.
    #[arg(long, env = "FLYWHEEL_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// Model repository folder (`<model>/<version>/model.onnx`) or object store URL
    /// (`s3://bucket/prefix`; credentials and endpoint from `AWS_*`), overriding the config.
    #[arg(long, env = "FLYWHEEL_MODEL_REPOSITORY")]
    model_repository: Option<PathBuf>,
    /// ONNX Runtime library file or folder, overriding the config (default: .ort/lib).
    #[arg(long, env = "FLYWHEEL_ORT_LIBRARY")]
    ort_library: Option<PathBuf>,
    /// Tokio worker threads for HTTP, overriding the config (0: half the cores).
    #[arg(long, env = "FLYWHEEL_HTTP_THREADS")]
    http_threads: Option<usize>,
    /// Bearer token for the admin API, overriding the config.
    #[arg(long, env = "FLYWHEEL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Bearer token for the feedback (labels) endpoint, overriding the config.
    #[arg(long, env = "FLYWHEEL_FEEDBACK_TOKEN", hide_env_values = true)]
    feedback_token: Option<String>,
}

fn main() -> ExitCode {
    keep_freed_memory_a_while();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("FLYWHEEL_LOG").unwrap_or_else(|_| EnvFilter::new("info,ort=warn")))
        .with_writer(std::io::stderr)
        .init();
    let overrides = overrides(&args);
    let config = match Config::load_with(args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let threads = config.effective_http_threads();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let gateway = match Gateway::start(config, args.config.clone(), overrides).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        match gateway.listener.local_addr() {
            // Tests and scripts read this line to find a port picked with :0.
            Ok(addr) => println!("flywheel gateway listening on http://{addr}"),
            Err(e) => tracing::warn!(error = %e, "could not read the bound address"),
        }
        if let Some(addr) = gateway.grpc_addr() {
            println!("flywheel gateway listening on grpc://{addr}");
        }
        if gateway.run(shutdown_signal()).await {
            tracing::info!("shut down cleanly");
            ExitCode::SUCCESS
        } else {
            tracing::warn!("grace period ended with requests still in flight");
            ExitCode::FAILURE
        }
    })
}

fn overrides(args: &Args) -> Overrides {
    Overrides {
        listen: args.listen,
        grpc_listen: args.grpc_listen,
        model_repository: args.model_repository.clone(),
        ort_library: args.ort_library.clone(),
        http_threads: args.http_threads,
        admin_token: args.admin_token.clone(),
        feedback_token: args.feedback_token.clone(),
    }
}

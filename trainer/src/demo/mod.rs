//! `trainer demo`: the whole loop on synthetic traffic, in a few minutes, with no human moving
//! artifacts. It trains and registers a first champion, starts the gateway (`configs/demo.toml`)
//! and `trainer watch` (`configs/trainer.toml`), sends transactions with labels arriving later,
//! injects drift part-way, prints a timeline (drift detected, retraining, the gate's verdict,
//! canary steps, promotion, live quality), and ends with a summary of each stage's time and of
//! live quality before the drift, after it, and after the promotion. The registry, samples,
//! logs and `summary.json` stay in `--dir`.

mod procs;
mod report;
mod timeline;
mod traffic;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use flywheel_registry::Registry;

use crate::config::TrainerConfig;
use crate::synthetic::{DriftKind, Synthetic};

/// Marks a folder the demo may wipe.
const MARKER: &str = ".flywheel-demo";

/// Demo settings.
#[derive(clap::Args, Clone, Debug)]
pub struct DemoArgs {
    /// Folder for the registry, samples, logs and summary (wiped at start).
    #[arg(long, default_value = "var/demo")]
    pub dir: PathBuf,
    /// Gateway binary (default: `gateway` beside this executable).
    #[arg(long)]
    pub gateway: Option<PathBuf>,
    #[arg(long, default_value = "configs/demo.toml")]
    pub gateway_config: PathBuf,
    #[arg(long, default_value = "configs/trainer.toml")]
    pub trainer_config: PathBuf,
    /// Requests per second (one transaction each).
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// Seconds of traffic before the drift.
    #[arg(long, default_value_t = 20.0)]
    pub before_s: f64,
    /// none, covariate, concept or both.
    #[arg(long, default_value = "both")]
    pub drift: String,
    /// Seconds over which the drift ramps in (0: abrupt).
    #[arg(long, default_value_t = 0.0)]
    pub ramp_s: f64,
    /// Delay before a request's label reaches the gateway.
    #[arg(long, default_value_t = 1000)]
    pub label_delay_ms: u64,
    /// Share of post-drift labels replaced by a coin toss (1.0: retraining cannot help).
    #[arg(long, default_value_t = 0.0)]
    pub label_noise: f64,
    /// Seconds of traffic after the promotion (or rejection), to measure live quality.
    #[arg(long, default_value_t = 15.0)]
    pub after_s: f64,
    /// Give up (and exit 1) after this long.
    #[arg(long, default_value_t = 300.0)]
    pub max_s: f64,
    /// Rows of synthetic history the first champion is trained on.
    #[arg(long, default_value_t = 20_000)]
    pub bootstrap_rows: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// What must happen for exit code 0: promoted or rejected.
    #[arg(long, default_value = "promoted")]
    pub expect: String,
    /// After the summary, keep the gateway serving (its `/dashboard` shows the loop that just
    /// ran) until Ctrl-C or SIGTERM.
    #[arg(long)]
    pub keep_serving: bool,
}

/// Runs the demo; returns the exit code (0 when `expect` happened).
pub fn run(args: DemoArgs) -> anyhow::Result<i32> {
    if args.expect != "promoted" && args.expect != "rejected" {
        bail!("--expect must be promoted or rejected, given {:?}", args.expect);
    }
    let drift: DriftKind = serde_json::from_value(serde_json::Value::String(args.drift.clone()))
        .with_context(|| format!("--drift must be none, covariate, concept or both, given {:?}", args.drift))?;
    let mut config = TrainerConfig::load(&args.trainer_config).map_err(anyhow::Error::msg)?;
    let dir = fresh_dir(&args.dir)?;
    let (models, samples) = (dir.join("models"), dir.join("samples"));
    config.registry = models.clone();
    config.samples = samples.clone();
    let registry = Registry::open(&models);
    let start = Instant::now();
    println!("Flywheel demo: the loop on synthetic card transactions; everything lands in {}", dir.display());

    let champion = crate::bootstrap::bootstrap(
        &registry,
        &config.model,
        &config.champion_alias,
        args.bootstrap_rows,
        args.seed,
        &config.train,
        config.ort_library.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let auc = champion.evaluation["holdout"]["auc"].as_f64().unwrap_or(f64::NAN);
    println!(
        "[{:6.1} s] trainer  │ bootstrap: version {} trained on {} synthetic rows (holdout AUC {auc:.3}), alias '{}'",
        start.elapsed().as_secs_f64(),
        champion.version,
        args.bootstrap_rows,
        config.champion_alias
    );

    let binary = procs::gateway_binary(args.gateway.as_deref())?;
    let (mut gateway, base) = procs::start_gateway(&binary, &args.gateway_config, &models, &dir.join("gateway.log"))?;
    let watch_args: Vec<&std::ffi::OsStr> = vec![
        "--config".as_ref(),
        args.trainer_config.as_os_str(),
        "--registry".as_ref(),
        models.as_os_str(),
        "--samples".as_ref(),
        samples.as_os_str(),
        "--gateway-config".as_ref(),
        args.gateway_config.as_os_str(),
    ];
    let (mut watcher, lines) = procs::start_watch(&watch_args, &dir.join("trainer.log"))?;
    let mut timeline = Timeline::new(start, &base, &config.model, Registry::open(&models), champion.version);
    timeline.say("gateway", &format!("serving '{}' version {} on {base}", config.model, champion.version));
    timeline.say("gateway", &format!("dashboard: {base}/dashboard"));

    let log = Arc::new(Mutex::new(traffic::Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let onset = (args.before_s * args.rate) as u64;
    let traffic = traffic::Traffic {
        base: base.clone(),
        model: config.model.clone(),
        rate: args.rate,
        stream: Synthetic { seed: args.seed + 1, drift, onset, ramp: (args.ramp_s * args.rate) as u64 },
        label_delay: Duration::from_millis(args.label_delay_ms),
        label_noise: args.label_noise,
        start,
    };
    timeline.say(
        "traffic",
        &format!(
            "{} req/s, labels {} ms later; '{}' drift at row {onset} (~{:.0} s in){}",
            args.rate,
            args.label_delay_ms,
            args.drift,
            args.before_s,
            if args.label_noise > 0.0 {
                format!(", {:.0}% of labels noise after it", args.label_noise * 100.0)
            } else {
                String::new()
            }
        ),
    );
    let sender = {
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || traffic.run(log, stop))
    };

    let mut drift_said = false;
    let mut done_at: Option<f64> = None;
    let outcome_ok = loop {
        std::thread::sleep(Duration::from_millis(200));
        timeline.poll(&lines, &log);
        if !drift_said && let Some(at) = log.lock().ok().and_then(|l| l.drift_at) {
            drift_said = true;
            timeline.say("traffic", &format!("drift injected at {at:.1} s"));
        }
        let now = timeline.now();
        let reached = match args.expect.as_str() {
            "promoted" => timeline.marks.promoted.is_some() && timeline.champion != champion.version,
            _ => timeline.marks.rejected.is_some(),
        };
        if reached && done_at.is_none() {
            done_at = Some(now);
            timeline
                .say("demo", &format!("{}; {:.0} s more traffic to measure live quality", args.expect, args.after_s));
        }
        if done_at.is_some_and(|t| now - t >= args.after_s) {
            break true;
        }
        if now > args.max_s {
            timeline.say("demo", &format!("gave up after {:.0} s: nothing was {}", args.max_s, args.expect));
            break false;
        }
        if !gateway.alive() || !watcher.alive() {
            timeline.say("demo", "a process exited early; see gateway.log and trainer.log");
            break false;
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    watcher.stop();
    let log = log.lock().map_err(|_| anyhow::anyhow!("traffic log poisoned"))?;
    let summary = report::summarise(&args, &config, &timeline.marks, &log, champion.version, &registry);
    report::print(&summary, &dir);
    std::fs::write(dir.join("summary.json"), serde_json::to_vec_pretty(&summary)?)?;
    let expected_promotion = args.expect == "promoted";
    let promoted = registry.resolve(&config.model, &config.champion_alias).ok() != Some(champion.version);
    let ok = outcome_ok && log.failures.is_empty() && promoted == expected_promotion;
    if args.keep_serving && gateway.alive() {
        let said =
            format!("\nThe gateway keeps serving; watch the loop that ran at {base}/dashboard (Ctrl-C stops it)");
        procs::until_stopped(&mut gateway, &said)?;
    }
    gateway.stop();
    Ok(if ok { 0 } else { 1 })
}

use timeline::Timeline;

/// Creates `dir` empty; wipes it first only when an earlier demo made it.
fn fresh_dir(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty && !dir.join(MARKER).exists() {
            bail!("{} exists and was not made by the demo; pass another --dir", dir.display());
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "made by `trainer demo`; wiped by the next run\n")?;
    Ok(std::fs::canonicalize(dir)?)
}

//! What the work beside serving costs the primary, measured with the independent client (wrk,
//! c=64, JSON) for `bench hotpath`: the tiny model as a registry champion with a reference
//! profile (so the drift detectors really run), in rounds alternating three gateways —
//! nothing beside serving (sampling 0%, drift off), the defaults (sampling 0%, drift on) and
//! everything sampled (100%, drift on). Issue 15's goals: drift on and 100% sampling each cost
//! under 5% of requests/s.

use std::path::Path;
use std::time::Duration;

use crate::hotpath::{WrkRun, infer_body, median, wrk};
use crate::procs::Gateway;

/// The three setups, in the order each round runs them.
pub const SETUPS: [(&str, &str); 3] = [
    ("sampling 0%, drift off", "[drift]\nenabled = false\n"),
    ("sampling 0%, drift on (defaults)", ""),
    ("sampling 100%, drift on", "[models.tiny]\nsample_rate = 1.0\n"),
];

/// Requests/s of each setup (in [`SETUPS`] order), every round's run.
pub struct TapCost {
    pub runs: Vec<(usize, &'static str, WrkRun)>,
}

impl TapCost {
    /// The median requests/s of `setup`.
    pub fn median(&self, setup: &str) -> f64 {
        let mut v: Vec<f64> = self.runs.iter().filter(|r| r.1 == setup).map(|r| r.2.requests_per_second).collect();
        median(&mut v)
    }

    /// Drift on against off, and 100% sampling against 0%, as requests/s ratios.
    pub fn ratios(&self) -> (f64, f64) {
        let [off, defaults, all] = SETUPS.map(|(name, _)| self.median(name));
        (defaults / off, all / defaults)
    }
}

/// Writes the tiny champion with a profile under `dir` and the gateway config of setup `index`.
fn prepare(dir: &Path, index: usize) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let root = dir.join("models");
    if !root.exists() {
        crate::sampling::tiny_champion_with_profile(&root)?;
    }
    let config = dir.join(format!("gateway-{index}.toml"));
    let rollout = "[models.tiny.rollout]\nchampion = \"champion\"\n";
    std::fs::write(&config, format!("{}{rollout}", SETUPS[index].1))?;
    Ok((root, config))
}

/// Instructions per request of each setup (in [`SETUPS`] order), every thread counted (the
/// tap's included), over `n` sequential requests; callgrind's outputs go to `keep(setup)`.
pub fn instructions(
    gateway_exe: &Path,
    n: usize,
    keep: impl Fn(&str) -> std::path::PathBuf,
) -> anyhow::Result<[f64; 3]> {
    let dir = tempfile::tempdir()?;
    let body = infer_body(16);
    let mut out = [0.0; 3];
    for (index, slot) in out.iter_mut().enumerate() {
        let (root, config) = prepare(dir.path(), index)?;
        *slot = crate::hotpath::instructions_per_request(
            gateway_exe,
            |c| {
                let mut c = crate::hotpath::gateway_command(c, &root);
                c.arg("--config").arg(&config);
                c
            },
            ("flywheel gateway listening on http://", "/v2/models/tiny/infer", &body),
            n,
            Some(&keep(&format!("tap{index}"))),
        )?;
    }
    Ok(out)
}

/// Runs `rounds` rounds of the three setups, `duration` each.
pub fn measure(gateway_exe: &Path, rounds: usize, duration: Duration, pin: bool) -> anyhow::Result<TapCost> {
    let dir = tempfile::tempdir()?;
    let body = infer_body(16);
    let mut runs = Vec::new();
    for round in 0..rounds {
        for (index, (name, _)) in SETUPS.iter().enumerate() {
            let (root, config) = prepare(dir.path(), index)?;
            let mut gateway = Gateway::start_exe(gateway_exe, &root, Some(&config), pin)?;
            let url = format!("http://{}/v2/models/tiny/infer", gateway.addr);
            wrk(&url, &body, 64, Duration::from_secs(1), pin)?;
            let run = wrk(&url, &body, 64, duration, pin)?;
            eprintln!("round {round} {name}: {run:?}");
            runs.push((round, *name, run));
            gateway.stop();
        }
    }
    Ok(TapCost { runs })
}

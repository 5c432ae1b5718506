//! Keeping the local copy of a registry in object storage current: one sync before the first
//! table is built, then one every `registry.poll_interval_ms` on a background thread. The sync
//! writes versions (by rename) and alias files into the local copy, where the watcher sees them
//! and reloads as for any local change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flywheel_registry::{Mirror, Remote, SyncReport};

use super::background::Background;
use super::reload::Reloader;
use crate::config::Config;
use crate::metrics::{REGISTRY_REQUESTS, REGISTRY_SYNCS};

/// The mirror of the config's registry URL, `None` for a local repository.
pub fn mirror_for(config: &Config) -> Result<Option<Arc<Mirror>>, String> {
    let (Some(url), Some(root)) = (&config.registry_url, &config.model_repository) else { return Ok(None) };
    let remote = Remote::shared(url).map_err(|e| e.to_string())?;
    Ok(Some(Arc::new(Mirror::new(remote, root.clone(), config.max_model_file_bytes))))
}

/// One sync, logged and counted. Returns the error when the store could not be listed.
pub fn sync_once(mirror: &Mirror, remote: &Remote) -> Result<SyncReport, String> {
    let before = remote.requests();
    let result = mirror.sync();
    metrics::counter!(REGISTRY_REQUESTS).increment(remote.requests() - before);
    match result {
        Ok(report) => {
            for (model, version) in &report.installed {
                tracing::info!(model, version, store = remote.url(), "version copied from the registry store");
            }
            for reason in &report.refused {
                tracing::error!(%reason, "registry object refused; not copied");
            }
            for reason in &report.failed {
                tracing::warn!(%reason, "registry sync incomplete; retried next poll");
            }
            let result = if !report.failed.is_empty() {
                "partial"
            } else if report.changed() {
                "changed"
            } else {
                "unchanged"
            };
            metrics::counter!(REGISTRY_SYNCS, "result" => result).increment(1);
            Ok(report)
        }
        Err(e) => {
            metrics::counter!(REGISTRY_SYNCS, "result" => "failed").increment(1);
            tracing::warn!(error = %e, store = remote.url(), "registry store unreachable; serving the local copy");
            Err(e.to_string())
        }
    }
}

/// Polls the store until dropped; the interval is read live from the config.
pub fn spawn(mirror: Arc<Mirror>, reloader: Arc<Reloader>) -> std::io::Result<Background> {
    Background::spawn("registry-sync", move |running| {
        let Some(remote) = mirror.registry().remote().cloned() else { return };
        let mut next = Instant::now();
        let mut polls: u64 = 0;
        while running.keep_going() {
            let interval = Duration::from_millis(reloader.config.load().registry.poll_interval_ms);
            next += interval;
            // Short sleeps, so a stop is seen promptly.
            while running.keep_going() && Instant::now() < next {
                std::thread::sleep((next - Instant::now()).min(Duration::from_millis(50)));
            }
            if !running.keep_going() {
                break;
            }
            crate::health::guard("registry-sync", || {
                let Ok(report) = sync_once(&mirror, &remote) else { return };
                // Another replica (the fleet's controller) moved a rollout: apply its state.
                let moved: Vec<&String> = report
                    .replaced
                    .iter()
                    .filter(|(_, file)| file == flywheel_registry::ROLLOUT_STATE_FILE)
                    .map(|(model, _)| model)
                    .collect();
                for model in &moved {
                    // From the store, not the copy: the freshest, and what a leader wrote last.
                    reloader.controls.reread_from_source(model);
                }
                if !moved.is_empty() {
                    reloader.reload();
                }
                // The trainer's runs, for the admin API: rare, so every fifth poll.
                polls += 1;
                if polls % 5 == 1 {
                    for model in mirror.registry().models().unwrap_or_default() {
                        let runs = (flywheel_registry::TRAINER_RUNS_DIR, flywheel_registry::TRAINER_RUNS_FILE);
                        if let Err(e) = mirror.sync_log(&model, runs.0, runs.1) {
                            tracing::warn!(model, error = %e, "trainer runs not copied from the store");
                        }
                    }
                }
            });
            // A sync slower than the interval does not queue up a burst of catch-up syncs.
            next = next.max(Instant::now());
        }
    })
}

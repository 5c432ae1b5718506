//! Watches the config file and the registry: file notifications (inotify) for promptness, a
//! fingerprint poll as the fallback (network filesystems, missed events), debounced so a burst
//! of edits becomes one reload.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use super::background::Background;
use super::reload::Reloader;

/// Watch settings.
#[derive(Clone, Debug)]
pub struct WatchSettings {
    /// How often the fingerprint is checked without notifications.
    pub poll: Duration,
    /// Quiet time after the last change before reloading.
    pub debounce: Duration,
}

/// Starts watching on its own thread; reloads run there too (never on the hot path).
/// `baseline` is the [`fingerprint`] taken before the table in force was built, so a change
/// made while it was being built is still seen.
pub fn spawn(reloader: Arc<Reloader>, settings: WatchSettings, baseline: u64) -> std::io::Result<Background> {
    let (tx, rx) = crossbeam_channel::unbounded::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (ours included: the fingerprint lists folders) are not changes.
        if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = tx.send(());
        }
    })
    .map_err(std::io::Error::other)?;
    let paths = watched_paths(&reloader);
    for (path, mode) in &paths {
        if let Err(e) = watcher.watch(path, *mode) {
            tracing::warn!(path = %path.display(), error = %e, "no file notifications; polling only");
        }
    }
    Background::spawn("rollout-watch", move |running| {
        let _watcher = watcher;
        let mut last = baseline;
        while running.keep_going() {
            let notified = rx.recv_timeout(settings.poll).is_ok();
            if notified {
                // Debounce: wait until the burst of events is over, but never longer than ten
                // quiet periods, so a steady trickle of writes cannot postpone a reload forever.
                let limit = Instant::now() + settings.debounce * 10;
                while Instant::now() < limit && rx.recv_timeout(settings.debounce).is_ok() {}
            }
            // Every step of the loop is guarded, so the watcher thread cannot die of a panic.
            let Some(now) = crate::health::guard("watcher", || fingerprint(&reloader)) else { continue };
            if now != last && running.keep_going() {
                last = now;
                crate::health::guard("watcher", || reloader.reload());
                // The reload itself may have been raced by more edits: look again next round.
            }
        }
    })
}

fn watched_paths(reloader: &Reloader) -> Vec<(PathBuf, RecursiveMode)> {
    let mut paths = Vec::new();
    if let Some(dir) = reloader.config_path.as_deref().and_then(Path::parent) {
        // The folder, not the file: editors replace files by rename.
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        paths.push((dir.to_path_buf(), RecursiveMode::NonRecursive));
    }
    if let Some(root) = reloader.config.load().model_repository.clone() {
        paths.push((root, RecursiveMode::Recursive));
    }
    paths
}

/// A hash of what a reload depends on: the config file and the registry's first two levels
/// (model folders, version folders, alias files), by name, size and modification time.
pub fn fingerprint(reloader: &Reloader) -> u64 {
    let mut h = DefaultHasher::new();
    if let Some(path) = &reloader.config_path {
        stat(path).hash(&mut h);
    }
    if let Some(root) = reloader.config.load().model_repository.clone() {
        // Model folders only: files at the root (the audit log) change without affecting routing.
        for model in sorted_entries(&root).into_iter().filter(|p| p.is_dir()) {
            // Not the folder's own time: it moves whenever a log or state file beside the
            // versions is replaced; the entries that matter are hashed one by one.
            model.hash(&mut h);
            for entry in sorted_entries(&model).into_iter().filter(|e| affects_routing(e)) {
                entry.hash(&mut h);
                stat(&entry).hash(&mut h);
            }
        }
    }
    h.finish()
}

/// Whether a file in a model folder can change what is served: versions and aliases do; the
/// logs appended beside them (drift events, trainer runs), the trainer's cursor and the
/// controller's rollout state do not, so
/// writing them does not cost a reload.
fn affects_routing(entry: &Path) -> bool {
    let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    !(name.ends_with(".jsonl")
        || name == flywheel_registry::TRAINER_CURSOR_FILE
        || name == flywheel_registry::ROLLOUT_STATE_FILE)
}

fn stat(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_beside_the_versions_do_not_count_as_routing_changes() {
        for name in ["3", "aliases.json", "model.onnx"] {
            assert!(affects_routing(Path::new(name)), "{name}");
        }
        for name in ["drift-events.jsonl", "trainer-runs.jsonl", "trainer-watch.json", "rollout-state.json"] {
            assert!(!affects_routing(Path::new(name)), "{name}");
        }
    }
}

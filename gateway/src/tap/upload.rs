//! Copies finalized sample and label part files to object storage, so a fleet's rows land in
//! one place the trainer, DuckDB and pyarrow read. The local layout is kept under the store's
//! prefix, each file name prefixed with the replica's (`<replica>-part-....parquet`), so
//! replicas never collide. A scan of the sample folder every `sampling.upload_interval_ms`
//! finds `*.parquet` files (only complete ones have that name) without a `.<name>.uploaded`
//! marker, puts them and writes the marker: a file finalized before a crash is uploaded after
//! the restart; the serving path never waits for the store.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flywheel_registry::Remote;

use crate::metrics::SAMPLE_UPLOADS as UPLOADS;
use crate::rollout::background::Background;

/// Starts the uploader thread for the part files under `dir`.
pub fn spawn(remote: Arc<Remote>, dir: PathBuf, replica: String, interval: Duration) -> std::io::Result<Background> {
    Background::spawn("sample-upload", move |running| {
        let mut uploaded: BTreeSet<PathBuf> = BTreeSet::new();
        while running.keep_going() {
            crate::health::guard("sample-upload", || upload_pending(&remote, &dir, &replica, &mut uploaded));
            let until = std::time::Instant::now() + interval;
            while running.keep_going() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // A last pass for what the tap finalized while shutting down.
        crate::health::guard("sample-upload", || upload_pending(&remote, &dir, &replica, &mut uploaded));
    })
}

/// Uploads every complete part file under `dir` not uploaded yet; returns how many it put.
pub fn upload_pending(remote: &Remote, dir: &Path, replica: &str, uploaded: &mut BTreeSet<PathBuf>) -> usize {
    let mut put = 0;
    for path in part_files(dir) {
        if uploaded.contains(&path) {
            // A note written just after this file was uploaded (the tap notes a label file
            // once it is finalized; a scan may have put it in between).
            super::store_ack::clear_covered(remote, &path);
            continue;
        }
        let marker = marker_of(&path);
        if marker.exists() {
            // Up in the store: the label journal objects it covers can go (a note left by a
            // crash between the upload and their deletion is done now).
            if super::store_ack::clear_covered(remote, &path) {
                uploaded.insert(path);
            }
            continue;
        }
        let Some(key) = store_key(dir, &path, replica) else { continue };
        let parts: Vec<&str> = key.split('/').collect();
        let result = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| remote.put_object(&parts, bytes).map_err(|e| e.to_string()));
        match result {
            Ok(()) => {
                if let Err(e) = std::fs::write(&marker, b"") {
                    tracing::warn!(path = %marker.display(), error = %e, "upload marker not written; the file is put again");
                }
                metrics::counter!(UPLOADS, "result" => "ok").increment(1);
                if super::store_ack::clear_covered(remote, &path) {
                    uploaded.insert(path);
                }
                put += 1;
            }
            Err(e) => {
                metrics::counter!(UPLOADS, "result" => "failed").increment(1);
                tracing::warn!(path = %path.display(), error = %e, "part file not uploaded; retried next scan");
                // The store is likely down: the rest waits for the next scan.
                break;
            }
        }
    }
    put
}

/// The store key of `path` (under `dir`): its relative path, the file name prefixed with the
/// replica's name.
pub fn store_key(dir: &Path, path: &Path, replica: &str) -> Option<String> {
    let relative = path.strip_prefix(dir).ok()?;
    let name = relative.file_name()?.to_str()?;
    let folder = relative.parent()?.to_str()?;
    Some(if folder.is_empty() { format!("{replica}-{name}") } else { format!("{folder}/{replica}-{name}") })
}

fn marker_of(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("part");
    path.with_file_name(format!(".{name}.uploaded"))
}

/// Complete part files under `dir`, sorted (oldest names first).
fn part_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_str().unwrap_or_default();
            if path.is_dir() {
                if !name.starts_with('.') {
                    stack.push(path);
                }
            } else if name.ends_with(".parquet") && !name.starts_with('.') {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_parts_are_put_once_under_the_replicas_name_and_temporaries_never() {
        let remote = Remote::shared("memory://uploads/data").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("samples/model=m/date=2026-12-01");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("part-1-000001.parquet"), b"one").unwrap();
        std::fs::write(folder.join(".part-2-000002.parquet.tmp"), b"half").unwrap();
        let mut seen = BTreeSet::new();
        assert_eq!(upload_pending(&remote, dir.path(), "r0", &mut seen), 1);
        let key = ["samples", "model=m", "date=2026-12-01", "r0-part-1-000001.parquet"];
        assert_eq!(remote.get_object(&key).unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(upload_pending(&remote, dir.path(), "r0", &mut seen), 0, "not put twice");
        // A restarted process (no memory of what it put) trusts the markers.
        assert_eq!(upload_pending(&remote, dir.path(), "r0", &mut BTreeSet::new()), 0);
        std::fs::write(folder.join("part-3-000003.parquet"), b"three").unwrap();
        assert_eq!(upload_pending(&remote, dir.path(), "r0", &mut seen), 1);
        let listed = remote.read_objects(&["samples"]).unwrap();
        assert_eq!(listed.len(), 2, "{:?}", listed.iter().map(|(n, _)| n).collect::<Vec<_>>());
    }
}

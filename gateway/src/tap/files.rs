//! Parquet part files: written under a hidden temporary name, fsynced, then renamed, so every
//! `*.parquet` a reader sees is complete. Leftover temporary files from a crash are removed at
//! startup (their rows were never acknowledged as stored).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use arrow_schema::SchemaRef;

/// Columns of few distinct values, dictionary-encoded (the label files' included).
const DICTIONARY_COLUMNS: &[&str] = &[
    flywheel_registry::samples::MODEL,
    flywheel_registry::samples::VERSION,
    flywheel_registry::samples::ARM,
    flywheel_registry::samples::STATUS,
    flywheel_registry::samples::LABEL,
];

/// When a part file is closed and a new one started.
#[derive(Clone, Debug)]
pub struct Rotation {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_age: std::time::Duration,
    pub row_group_rows: usize,
}

/// An open part file.
pub struct PartFile {
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    target: PathBuf,
    rows: usize,
    opened: Instant,
    /// The date partition this file belongs to.
    pub date: String,
}

/// The UTC date of `t` as `YYYY-MM-DD`.
pub fn date_of(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_owned()
}

fn unique_name() -> String {
    let ms = SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("part-{ms}-{:06}", flywheel_registry::fsutil::unique() % 1_000_000)
}

impl PartFile {
    /// Opens a new part file in `dir` (created if missing) for rows of `schema`.
    pub fn open(dir: &Path, schema: SchemaRef, rotation: &Rotation, date: String) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let name = unique_name();
        let tmp = dir.join(format!(".{name}.parquet.tmp"));
        let target = dir.join(format!("{name}.parquet"));
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(rotation.row_group_rows.max(1)))
            // Dictionaries only where values repeat: feature values and request ids are nearly
            // all distinct, and hashing each of them into a dictionary the writer then drops was
            // half the tap's work per sampled row.
            .set_dictionary_enabled(false);
        for column in DICTIONARY_COLUMNS {
            props = props.set_column_dictionary_enabled(ColumnPath::from(*column), true);
        }
        let props = props.build();
        let file = File::create(&tmp)?;
        let writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(std::io::Error::other)?;
        Ok(Self { writer, tmp, target, rows: 0, opened: Instant::now(), date })
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> std::io::Result<()> {
        self.rows += batch.num_rows();
        self.writer.write(batch).map_err(std::io::Error::other)
    }

    /// Whether the file has reached a rotation limit.
    pub fn full(&self, rotation: &Rotation) -> bool {
        self.rows >= rotation.max_rows
            || self.writer.bytes_written() + self.writer.in_progress_size() >= rotation.max_bytes
            || self.opened.elapsed() >= rotation.max_age
    }

    /// Writes the footer, fsyncs, and renames the file to its final name; returns that path.
    pub fn finish(mut self) -> std::io::Result<PathBuf> {
        self.writer.finish().map_err(std::io::Error::other)?;
        self.writer.inner_mut().sync_all()?;
        std::fs::rename(&self.tmp, &self.target)?;
        if let Some(dir) = self.target.parent() {
            flywheel_registry::fsutil::sync_dir(dir)?;
        }
        Ok(self.target.clone())
    }

    /// Gives up on the file (after a write error): the temporary file is removed.
    pub fn abandon(self) {
        let tmp = self.tmp.clone();
        drop(self);
        let _ = std::fs::remove_file(tmp);
    }
}

/// Removes temporary part files left by a crash under `root`; returns how many.
pub fn clean_leftovers(root: &Path) -> usize {
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.') && n.ends_with(".parquet.tmp"))
                && std::fs::remove_file(&path).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

//! Dataset assembly against files laid out as the gateway writes them.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};

use super::dataset::{AssembleSpec, DatasetError, assemble};
use crate::test_files::{ts, write};

/// A sample row: (id, row, time µs, arm, two features).
type SampleRow = (&'static str, u32, i64, &'static str, [f32; 2]);

fn samples(dir: &Path, file: &str, rows: &[SampleRow]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("row", DataType::UInt32, false),
        Field::new("time", ts(), false),
        Field::new("arm", DataType::Utf8, false),
        Field::new("in_input_0", DataType::Float32, true),
        Field::new("in_input_1", DataType::Float32, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
        Arc::new(UInt32Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
        Arc::new(TimestampMicrosecondArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>()).with_timezone("UTC")),
        Arc::new(StringArray::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
        Arc::new(Float32Array::from(rows.iter().map(|r| r.4[0]).collect::<Vec<_>>())),
        Arc::new(Float32Array::from(rows.iter().map(|r| r.4[1]).collect::<Vec<_>>())),
    ];
    write(&dir.join(format!("samples/model=m/date=2026-11-27/{file}")), RecordBatch::try_new(schema, columns).unwrap());
}

fn labels(dir: &Path, file: &str, rows: &[(&'static str, u32, f64, i64)]) {
    crate::test_files::labels(dir, ("m", "2026-11-27"), file, rows);
}

fn spec(dir: &Path) -> AssembleSpec {
    AssembleSpec {
        sample_dir: dir.to_path_buf(),
        model: "m".into(),
        since_us: None,
        until_us: None,
        labels_until_us: None,
        holdout_fraction: 0.4,
        min_rows: 4,
        max_nan_rate: 0.1,
        min_per_class: 1,
        only_files: None,
    }
}

fn fixture(dir: &Path) {
    samples(
        dir,
        "part-2.parquet",
        &[
            ("c", 0, 30, "champion", [3.0, 0.3]),
            ("d", 0, 40, "canary", [4.0, 0.4]),
            ("d", 1, 40, "canary", [4.5, 0.45]),
        ],
    );
    samples(
        dir,
        "part-1.parquet",
        &[
            ("a", 0, 10, "champion", [1.0, 0.1]),
            ("b", 0, 20, "champion", [2.0, 0.2]),
            ("b", 0, 20, "shadow", [9.0, 9.0]),
            ("u", 0, 25, "champion", [7.0, 7.0]),
        ],
    );
    // "u" has no label; "b" was relabelled (the later label wins); "d" row 1 is labelled too.
    labels(
        dir,
        "part-1.parquet",
        &[("a", 0, 0.0, 100), ("b", 0, 0.0, 100), ("c", 0, 1.0, 100), ("d", 0, 0.0, 100), ("d", 1, 1.0, 100)],
    );
    labels(dir, "part-2.parquet", &[("b", 0, 1.0, 200)]);
}

#[test]
fn joins_labels_by_id_and_row_orders_by_time_and_holds_out_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let d = assemble(&spec(dir.path())).unwrap();
    assert_eq!(d.features, ["in_input_0", "in_input_1"]);
    let mut all = d.train.x.clone();
    all.extend(d.holdout.x.clone());
    assert_eq!(
        all.iter().map(|x| x[0]).collect::<Vec<_>>(),
        [1.0, 2.0, 3.0, 4.0, 4.5],
        "shadow and unlabelled rows left out"
    );
    assert_eq!(d.train.y, [0.0, 1.0, 1.0], "the later label of b wins");
    assert_eq!(d.holdout.y, [0.0, 1.0]);
    assert!(d.train.time_us.iter().max() <= d.holdout.time_us.iter().min(), "no leakage from the future");
    assert_eq!(d.window_us, (10, 40));
}

#[test]
fn the_digest_depends_on_the_rows_not_on_file_layout() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fixture(one.path());
    fixture(two.path());
    std::fs::rename(
        two.path().join("samples/model=m/date=2026-11-27/part-1.parquet"),
        two.path().join("samples/model=m/date=2026-11-27/part-9.parquet"),
    )
    .unwrap();
    let (a, b) = (assemble(&spec(one.path())).unwrap(), assemble(&spec(two.path())).unwrap());
    assert_eq!(a.digest, b.digest);
    let narrower = AssembleSpec { since_us: Some(15), ..spec(one.path()) };
    let c = assemble(&AssembleSpec { min_rows: 1, ..narrower }).unwrap();
    assert_ne!(a.digest, c.digest, "a different window is different data");
    assert_eq!(c.train.x.len() + c.holdout.x.len(), 4);
}

#[test]
fn bad_data_stops_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let too_few = assemble(&AssembleSpec { min_rows: 50, ..spec(dir.path()) }).unwrap_err();
    assert!(matches!(too_few, DatasetError::TooFew { rows: 5, min: 50, .. }), "{too_few}");
    let balance = assemble(&AssembleSpec { min_per_class: 3, ..spec(dir.path()) }).unwrap_err();
    assert_eq!(balance.to_string(), "3 positive and 2 negative labels; at least 3 of each are needed");
    samples(dir.path(), "part-3.parquet", &[("e", 0, 50, "champion", [f32::NAN, 0.5])]);
    labels(dir.path(), "part-3.parquet", &[("e", 0, 0.0, 300)]);
    let nan = assemble(&spec(dir.path())).unwrap_err();
    assert!(nan.to_string().starts_with("feature 'in_input_0' is 16.7% NaN"), "{nan}");
}

#[test]
fn date_partitions_before_the_window_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_795_737_600_000_000; // 2026-11-27T00:00:00Z, the fixture's partition date
    samples(
        dir.path(),
        "part-1.parquet",
        &[
            ("a", 0, t0 + 1, "champion", [1.0, 0.1]),
            ("b", 0, t0 + 2, "champion", [2.0, 0.2]),
            ("c", 0, t0 + 3, "champion", [3.0, 0.3]),
            ("d", 0, t0 + 4, "champion", [4.0, 0.4]),
        ],
    );
    labels(
        dir.path(),
        "part-1.parquet",
        &[("a", 0, 0.0, t0 + 9), ("b", 0, 1.0, t0 + 9), ("c", 0, 0.0, t0 + 9), ("d", 0, 1.0, t0 + 9)],
    );
    // An unreadable file in an older partition: read without a window, skipped with one.
    let old = dir.path().join("samples/model=m/date=2026-11-20/part-0.parquet");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(&old, b"not parquet").unwrap();
    let e = assemble(&spec(dir.path())).unwrap_err();
    assert!(e.to_string().contains("date=2026-11-20"), "{e}");
    let d = assemble(&AssembleSpec { since_us: Some(t0), ..spec(dir.path()) }).unwrap();
    assert_eq!(d.train.y.len() + d.holdout.y.len(), 4);
}

#[test]
fn labels_left_in_the_fleets_label_journal_join_like_label_files_and_the_later_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    // A replica lost before its label file was up: its acknowledged labels are journal objects.
    let journal = dir.path().join("label-journal/model=m");
    std::fs::create_dir_all(&journal).unwrap();
    std::fs::write(
        journal.join("1764600000000-r1-000000.jsonl"),
        concat!(
            "{\"id\":\"a\",\"row\":0,\"label\":1.0,\"time_us\":300}\n",
            "{\"id\":\"d\",\"row\":1,\"label\":0.0,\"time_us\":50}\n",
            "not json\n",
        ),
    )
    .unwrap();
    let d = assemble(&spec(dir.path())).unwrap();
    let mut y = d.train.y.clone();
    y.extend(d.holdout.y.clone());
    // a: the journal's later label (1) replaces the file's (0); d row 1: the file's later (1) stays.
    assert_eq!(y, [1.0, 1.0, 1.0, 0.0, 1.0]);
    std::fs::remove_dir_all(dir.path().join("label-journal")).unwrap();
    let without = assemble(&spec(dir.path())).unwrap();
    assert_eq!(without.train.y[0], 0.0, "the journal is what changed a");
}

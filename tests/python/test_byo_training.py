"""Bring-your-own training: `trainer run --command` runs a scikit-learn script that exports ONNX
with skl2onnx; its model goes through the same export checks, gate and registration."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from conftest import ROOT, binary

FEATURES = 12


def write_served(samples: pathlib.Path, rows: pa.Table) -> None:
    """Lays `rows` out as the gateway writes samples and labels (one request per row)."""
    n = rows.num_rows
    ids = pa.array([f"r{i}" for i in range(n)])
    zeros = pa.array(np.zeros(n, dtype=np.uint32))
    t0 = 1_790_000_000_000_000
    served = pa.array(t0 + np.arange(n, dtype=np.int64) * 10_000, type=pa.timestamp("us", tz="UTC"))
    labelled = pa.array(t0 + np.arange(n, dtype=np.int64) * 10_000 + 1_000_000, type=pa.timestamp("us", tz="UTC"))
    columns = {"request_id": ids, "row": zeros, "time": served, "arm": pa.array(["champion"] * n)}
    feature_names = [c for c in rows.column_names if c not in ("label", "probability")]
    for i, name in enumerate(feature_names):
        columns[f"in_input_{i}"] = pa.array(rows[name].to_numpy().astype(np.float32))
    sample_dir = samples / "samples" / "model=fraud" / "date=2026-09-21"
    label_dir = samples / "labels" / "model=fraud" / "date=2026-09-21"
    sample_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    pq.write_table(pa.table(columns), sample_dir / "part-0.parquet")
    labels = {"request_id": ids, "row": zeros, "label": rows["label"], "time": labelled}
    pq.write_table(pa.table(labels), label_dir / "part-0.parquet")


def run_byo(tmp_path, command, env=None):
    """A bootstrapped champion, drifted served rows, then `trainer run --command`; returns the
    run record and the registry folder."""
    trainer = binary("trainer")
    config = tmp_path / "trainer.toml"
    config.write_text('model = "fraud"\nmin_rows = 500\n[train]\nhidden = [8]\nepochs = 100\ndevice = "cpu"\n')
    registry, samples = tmp_path / "models", tmp_path / "samples"
    common = ["--config", str(config), "--registry", str(registry), "--samples", str(samples)]
    subprocess.run([trainer, "bootstrap", *common, "--rows", "6000"], check=True, capture_output=True, cwd=ROOT)
    drifted = tmp_path / "drifted.parquet"
    subprocess.run(
        [trainer, "generate", "--rows", "5000", "--seed", "2", "--drift", "both", "--out", str(drifted)],
        check=True,
        capture_output=True,
    )
    write_served(samples, pq.read_table(drifted))
    run = subprocess.run(
        [trainer, "run", *common, "--command", command], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout), registry


def test_a_scikit_learn_script_is_checked_gated_and_registered_with_lineage(tmp_path):
    command = f"{sys.executable} {ROOT / 'scripts/byo/train_sklearn.py'}"
    record, registry = run_byo(tmp_path, command)
    assert record["outcome"] == "registered", record
    assert record["training"]["device"] == "command"
    version = record["version"]
    manifest = json.loads((registry / "fraud" / str(version) / "manifest.json").read_text())
    assert manifest["parent_version"] == 1
    assert manifest["hyperparameters"]["model"].startswith("sklearn LogisticRegression")
    assert manifest["hyperparameters"]["trainer"] == f"command: {command}"
    assert "command:" in manifest["code_revision"]
    assert manifest["gate"]["verdict"]["passed"] is True
    assert manifest["data"]["digest"] == record["data"]["digest"]
    aliases = json.loads((registry / "fraud" / "aliases.json").read_text())
    assert aliases["challenger"] == version

    # The registered file is what the gateway will serve: the champion's signature, probabilities.
    import onnxruntime as ort

    session = ort.InferenceSession(str(registry / "fraud" / str(version) / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input"]
    (out,) = session.run(["output"], {"input": np.zeros((3, FEATURES), dtype=np.float32)})
    assert out.shape == (3, 1) and np.all((0 <= out) & (out <= 1))


def test_a_ray_job_on_a_running_head_node_is_checked_gated_and_registered(tmp_path):
    """Retraining on an existing engine: a Ray head node (started here, as an operator would
    run one) fits a grid of candidates in parallel; the trainer checks, gates and registers the
    best like any other command's model."""
    ray = str(ROOT / ".venv" / "bin" / "ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(
        [ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
         "--include-dashboard", "false", "--disable-usage-stats"],
        check=True, capture_output=True, env=env,
    )
    try:
        command = f"{sys.executable} {ROOT / 'scripts/byo/train_ray.py'}"
        record, registry = run_byo(tmp_path, command, env)
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env)
    assert record["outcome"] == "registered", record
    manifest = json.loads((registry / "fraud" / str(record["version"]) / "manifest.json").read_text())
    params = manifest["hyperparameters"]
    assert params["model"].endswith("fitted on Ray"), params
    assert len(params["grid"]) == 4 and params["ray_cpus"] == 2, params
    assert manifest["gate"]["verdict"]["passed"] is True


def test_a_run_without_labelled_rows_fails_with_the_reason_and_exit_code_1(tmp_path):
    trainer = binary("trainer")
    registry = tmp_path / "models"
    subprocess.run(
        [trainer, "bootstrap", "--registry", str(registry), "--rows", "2000", "--device", "cpu"],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    run = subprocess.run(
        [trainer, "run", "--registry", str(registry), "--samples", str(tmp_path / "none"), "--command", "exit 3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 1
    record = json.loads(run.stdout)
    assert record["outcome"] == "failed"
    assert "labelled rows" in record["reasons"][0], record

"""The gateway's Parquet samples and labels, read back with pyarrow and DuckDB as a data team
would: every sampled request is there with its version and arm, and labels join by id."""

import os
import pathlib
import subprocess
import tempfile
import urllib.request
import json

import duckdb
import pyarrow.dataset as ds
import pytest

from conftest import binary

RATE = 0.5
N = 400


def fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def sampled(request_id: str) -> bool:
    """The gateway's rule: FNV-1a of the id, modulo 10^6, below the rate."""
    return (fnv1a(request_id.encode()) % 1_000_000) / 1_000_000 < RATE


def post(url, body, headers=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req) as r:
        return json.load(r), dict(r.headers)


@pytest.fixture(scope="module")
def run():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        repo = tmp / "models"
        subprocess.run([binary("make-model-repo"), str(repo)], check=True, capture_output=True)
        config = tmp / "gateway.toml"
        config.write_text(f"[sampling]\nrate = {RATE}\n")
        process = subprocess.Popen(
            [binary("gateway"), "--config", str(config), "--model-repository", str(repo), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, env={**os.environ, "FLYWHEEL_LOG": "warn"}, text=True,
        )
        base = process.stdout.readline().strip().split("listening on ")[1]
        ids = [f"req-{i}" for i in range(N)]
        versions, gateway_ids = {}, {}
        for i, rid in enumerate(ids):
            rows = [[(i % 7) / 7.0] * 16, [0.5] * 16] if i % 2 else [[(i % 7) / 7.0] * 16]
            body = {"inputs": [{"name": "input", "shape": [len(rows), 16], "datatype": "FP32", "data": rows}]}
            reply, headers = post(f"{base}/v2/models/tiny/infer", body, {"x-request-id": rid})
            versions[rid] = reply["model_version"]
            assert headers["x-request-id"] == rid, "the client's id is echoed"
            gateway_ids[rid] = headers["x-flywheel-request-id"]
        labelled = ids[:100]
        # Labels join on the gateway's id of each request (unique), not on the client's.
        post(f"{base}/v2/models/tiny/feedback", {"labels": [{"id": gateway_ids[rid], "label": 1.0} for rid in labelled]})
        process.terminate()
        assert process.wait(timeout=20) == 0
        yield tmp / "samples", ids, versions, labelled, repo


def test_pyarrow_reads_every_sampled_request_with_its_version_and_arm(run):
    root, ids, versions, _, _ = run
    table = ds.dataset(root / "samples", format="parquet", partitioning="hive").to_table()
    expected = {rid for rid in ids if sampled(rid)}
    assert set(table.column("client_request_id").to_pylist()) == expected
    # Binomial(400, 0.5): sd 10; the deterministic set above is the real check, this the sanity one.
    assert abs(len(expected) - N * RATE) < 50
    rows = table.to_pylist()
    assert all(str(r["version"]) == versions[r["client_request_id"]] and r["arm"] == "champion" for r in rows)
    assert len({r["request_id"] for r in rows}) == len(expected), "one gateway id per request"
    two_row_requests = {rid for rid in expected if int(rid.split("-")[1]) % 2}
    assert len(rows) == len(expected) + len(two_row_requests), "one row per request row"
    assert table.schema.field("in_input_0").type == "float" and table.schema.field("out_output_0").type == "float"
    assert str(table.schema.field("time").type) == "timestamp[us, tz=UTC]"


def test_duckdb_joins_labels_by_request_id(run):
    root, ids, _, labelled, _ = run
    samples = f"read_parquet('{root}/samples/**/*.parquet', hive_partitioning = true)"
    labels = f"read_parquet('{root}/labels/**/*.parquet', hive_partitioning = true)"
    con = duckdb.connect()
    (count,) = con.execute(f"select count(distinct request_id) from {samples} where model = 'tiny'").fetchone()
    assert count == sum(sampled(rid) for rid in ids)
    (stored,) = con.execute(f"select count(*) from {labels}").fetchone()
    assert stored == len(labelled)
    (joined,) = con.execute(f"select count(*) from {samples} s join {labels} l using (request_id, row)").fetchone()
    assert joined == sum(sampled(rid) for rid in labelled)


def test_a_profile_is_built_from_a_sample_file(run):
    root, _, _, _, repo = run
    part = next((root / "samples").rglob("*.parquet"))
    done = subprocess.run(
        [binary("flywheel-profile"), "--root", str(repo), "tiny", "2", "--from", str(part), "--prediction", "out_output_0"],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    profile = json.loads((repo / "tiny" / "2" / "profile.json").read_text())
    assert [f["name"] for f in profile["features"]] == [f"in_input_{i}" for i in range(16)]
    assert len(profile["features"][0]["edges"]) == 9 and profile["prediction"]["name"] == "prediction"
    bad = subprocess.run([binary("flywheel-profile"), "--root", str(repo), "tiny", "2", "--from", str(part), "--features", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and 'no column "nope"' in bad.stderr

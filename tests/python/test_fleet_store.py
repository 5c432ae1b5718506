"""A fleet's data in object storage, read as a data team would: three gateways over one
registry in an S3-compatible server (moto), each uploading its sample and label files; labels
are posted to a different replica than the one that served the request. pyarrow's S3
filesystem reads the store directly (DuckDB's httpfs extension downloads from the internet,
which these machines cannot reach, so DuckDB queries the Arrow tables pyarrow read), and the
trainer assembles one dataset from all three replicas' rows."""

import json
import os
import pathlib
import socket
import subprocess
import tempfile
import time
import urllib.request

import boto3
import duckdb
import pyarrow.dataset as ds
import pyarrow.fs
import pytest

from conftest import ROOT, binary

REPLICAS = 3
N = 60
BUCKET = "flywheel"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_client(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                        region_name="us-east-1")


def trainer(fleet, *args):
    """`trainer <args> --registry s3://.../reg --model tiny`, its copy under the test's folder."""
    return subprocess.run(
        [binary("trainer"), *args, "--registry", f"s3://{BUCKET}/reg", "--model", "tiny"],
        capture_output=True, text=True, env={**fleet["env"], "TMPDIR": str(fleet["tmp"])},
    )


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r), dict(r.headers)


@pytest.fixture(scope="module")
def fleet():
    port = free_port()
    moto = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "FLYWHEEL_LOG": "warn",
    }
    s3 = s3_client(endpoint)
    deadline = time.time() + 30
    while True:
        try:
            s3.create_bucket(Bucket=BUCKET)
            break
        except Exception:
            if time.time() > deadline:
                moto.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.2)
    gateways = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = pathlib.Path(tmp)
            subprocess.run([binary("make-model-repo"), str(tmp / "local")], check=True, capture_output=True)
            subprocess.run(
                [binary("registry"), "--root", f"s3://{BUCKET}/reg", "publish", "tiny",
                 str(tmp / "local" / "tiny" / "1" / "model.onnx"), "--alias", "champion"],
                check=True, capture_output=True, env=env,
            )
            bases = []
            for i in range(REPLICAS):
                config = tmp / f"gw{i}.toml"
                config.write_text(
                    '[models.tiny.rollout]\nchampion = "champion"\n'
                    f"[sampling]\nrate = 1.0\ndir = \"{tmp / f'samples{i}'}\"\nmax_file_age_ms = 500\nupload_interval_ms = 200\n"
                    f"[registry]\ncache_dir = \"{tmp / f'copy{i}'}\"\npoll_interval_ms = 200\n"
                    f'[fleet]\nreplica = "r{i}"\n'
                )
                process = subprocess.Popen(
                    [binary("gateway"), "--config", str(config), "--model-repository", f"s3://{BUCKET}/reg",
                     "--listen", "127.0.0.1:0"],
                    stdout=subprocess.PIPE, env=env, text=True,
                )
                gateways.append(process)
                line = process.stdout.readline().strip()
                assert line.startswith("flywheel gateway listening on "), line
                bases.append(line.split("listening on ")[1])
            served = []
            for n in range(N):
                i = n % REPLICAS
                body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [[n / N] * 16]}]}
                _, headers = post(f"{bases[i]}/v2/models/tiny/infer", body)
                served.append((i, headers["x-flywheel-request-id"]))
            # Each label goes to another replica than the one that served its request.
            for n, (i, rid) in enumerate(served):
                other = bases[(i + 1) % REPLICAS]
                post(f"{other}/v2/models/tiny/feedback", {"labels": [{"id": rid, "label": float(n % 2)}]})
            for process in gateways:
                process.terminate()
            for process in gateways:
                assert process.wait(timeout=30) == 0
            yield {"endpoint": endpoint, "env": env, "ids": [rid for _, rid in served], "tmp": tmp}
    finally:
        for process in gateways:
            if process.poll() is None:
                process.kill()
        moto.kill()
        moto.wait()


def s3fs(endpoint):
    return pyarrow.fs.S3FileSystem(access_key="test", secret_key="test", region="us-east-1",
                                   endpoint_override=endpoint.removeprefix("http://"), scheme="http")


def test_every_replicas_samples_and_labels_reach_the_store_and_join_there(fleet):
    fs = s3fs(fleet["endpoint"])
    root = f"{BUCKET}/reg/.data"
    samples = ds.dataset(f"{root}/samples", filesystem=fs, format="parquet", partitioning="hive").to_table()
    labels = ds.dataset(f"{root}/labels", filesystem=fs, format="parquet", partitioning="hive").to_table()
    assert sorted(samples.column("request_id").to_pylist()) == sorted(fleet["ids"])
    files = fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/samples", recursive=True))
    writers = {info.base_name.split("-part-")[0] for info in files if info.base_name.endswith(".parquet")}
    assert writers == {f"r{i}" for i in range(REPLICAS)}, writers
    con = duckdb.connect()
    con.register("samples", samples)
    con.register("labels", labels)
    (stored,) = con.execute("select count(distinct request_id) from labels").fetchone()
    assert stored == N, "every label posted to any replica is in the store"
    (joined,) = con.execute("select count(*) from samples s join labels l using (request_id, row)").fetchone()
    assert joined == N, "labels join their request's row whichever replica served it"


def test_the_trainer_assembles_one_dataset_from_every_replica(fleet):
    out = trainer(fleet, "dataset")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["train_rows"] + summary["holdout_rows"] == N, summary
    assert summary["positives"] == N // 2, summary


def test_a_trainer_run_is_recorded_in_the_store_for_the_fleet(fleet):
    # 60 rows are fewer than the trainer's min_rows: the run fails, and says so in its record.
    out = trainer(fleet, "run")
    assert out.returncode == 1, out.stderr
    record = json.loads(out.stdout)
    assert record["outcome"] == "failed", record
    s3 = s3_client(fleet["endpoint"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="reg/tiny/trainer-runs/")["Contents"]]
    assert len(keys) == 1 and "-trainer-" in keys[0], keys
    stored = json.load(s3.get_object(Bucket=BUCKET, Key=keys[0])["Body"])
    assert stored["outcome"] == "failed" and stored["reasons"] == record["reasons"], stored

#!/usr/bin/env python3
"""Explanation figures, side by side in one run (release binaries):

1. Cost per explained row for 12, 16 and 32 features, exact (every coalition) and sampled
   (64 orderings): model evaluations and milliseconds, through POST /explain, 100 background rows.
2. Automatic explanations next to serving at the tiny model's knee: wrk on /infer with and
   without `[models.tiny.explain] rate = 1.0`, serving req/s and p99 beside the explained rows/s
   and the rows shed.

    .venv/bin/python scripts/explain-figures.py <bin dir with gateway, registry, make-model-repo> [seconds]
"""

import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

BIN = pathlib.Path(sys.argv[1])
SECONDS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "FLYWHEEL_ORT_LIBRARY": str(ROOT / ".ort/lib"), "FLYWHEEL_LOG": "warn"}


def start(config, repo, tmp, name):
    path = tmp / f"{name}.toml"
    path.write_text(config)
    process = subprocess.Popen(
        [BIN / "gateway", "--config", path, "--model-repository", repo, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, env=ENV, text=True,
    )
    line = process.stdout.readline().strip()
    return process, line.rsplit("//", 1)[1]


def post(url, path, body):
    request = urllib.request.Request(f"http://{url}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as reply:
        return json.loads(reply.read())


def metric(url, name):
    text = urllib.request.urlopen(f"http://{url}/metrics").read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def cost(tmp):
    repo = tmp / "lr"
    rng = np.random.default_rng(0)
    for f in (12, 16, 32):
        x = rng.normal(size=(2000, f)).astype(np.float32)
        y = (x @ rng.normal(size=f) + x[:, 0] * x[:, 1] > 0).astype(np.int64)
        clf = LogisticRegression(max_iter=500).fit(x, y)
        onnx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
        (tmp / f"lr{f}.onnx").write_bytes(onnx.SerializeToString())
        subprocess.run([BIN / "registry", "--root", repo, "publish", f"lr{f}", tmp / f"lr{f}.onnx"], check=True,
                       capture_output=True, env=ENV)
        header = ",".join(f"in_X_{j}" for j in range(f))
        np.savetxt(tmp / f"lr{f}.csv", x[:500], delimiter=",", header=header, comments="", fmt="%.9g")
        subprocess.run([BIN / "registry", "--root", repo, "profile", f"lr{f}", "1", "--rows", tmp / f"lr{f}.csv"],
                       check=True, capture_output=True, env=ENV)
    print("features method evaluations_per_row ms_per_row (median of 5)")
    for method, exact_max in (("exact", 16), ("sampled", 0)):
        process, url = start(f"[explain]\nexact_max_features = {exact_max}\n", repo, tmp, method)
        try:
            for f in (12, 16, 32):
                if method == "exact" and f > 16:
                    print(f"{f} exact - - (2^{f} coalitions x 100 rows: not run)")
                    continue
                body = {"inputs": [{"name": "X", "shape": [1, f], "datatype": "FP32",
                                    "data": rng.normal(size=f).astype(np.float32).tolist()}]}
                runs = [post(url, f"/v2/models/lr{f}/explain", body)["explained"] for _ in range(5)]
                ms = statistics.median(r["milliseconds"] for r in runs)
                print(f"{f} {runs[0]['method']} {runs[0]['evaluations_per_row']} {ms:.1f}")
        finally:
            process.terminate()
            process.wait()


def knee(tmp):
    repo = tmp / "tiny"
    subprocess.run([BIN / "make-model-repo", repo], check=True, capture_output=True, env=ENV)
    rng = np.random.default_rng(1)
    rows = rng.uniform(-2, 2, size=(500, 16))
    header = ",".join(f"in_input_{j}" for j in range(16))
    np.savetxt(tmp / "tiny.csv", rows, delimiter=",", header=header, comments="", fmt="%.9g")
    subprocess.run([BIN / "registry", "--root", repo, "profile", "tiny", "latest", "--rows", tmp / "tiny.csv"],
                   check=True, capture_output=True, env=ENV)
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
                                   "data": rows[0].astype(np.float32).tolist()}]})
    lua = tmp / "infer.lua"
    lua.write_text(f"wrk.method = 'POST'\nwrk.headers['content-type'] = 'application/json'\nwrk.body = '{body}'\n")
    print("policy connections serving_req/s p50 p99 explained_rows/s shed_rows/s (by reason)")
    runs = {
        "none": "",
        "rate=1,share=0.1": "[models.tiny.explain]\nrate = 1.0\n",
        "rate=1,share=1.0": "[explain]\nauto_cpu_share = 1.0\n[models.tiny.explain]\nrate = 1.0\n",
    }
    for policy, extra in runs.items():
        process, url = start(f"[sampling]\nrate = 0.0\n{extra}", repo, tmp, "knee")
        try:
            for connections in (4, 32):
                explained0 = metric(url, "flywheel_explained_rows_total")
                shed0 = metric(url, "flywheel_explanations_dropped_total")
                reasons0 = {r: metric(url, f'flywheel_explanations_dropped_total{{model="tiny",reason="{r}"}}')
                            for r in ("queue_full", "budget", "serving_busy", "failed", "too_costly")}
                out = subprocess.run(
                    ["wrk", "-t2", f"-c{connections}", f"-d{SECONDS}s", "--latency", "-s", lua,
                     f"http://{url}/v2/models/tiny/infer"], capture_output=True, text=True, check=True,
                ).stdout
                time.sleep(0.5)
                explained = (metric(url, "flywheel_explained_rows_total") - explained0) / SECONDS
                shed = (metric(url, "flywheel_explanations_dropped_total") - shed0) / SECONDS
                reasons = {r: metric(url, f'flywheel_explanations_dropped_total{{model="tiny",reason="{r}"}}') - v
                           for r, v in reasons0.items()}
                by = ",".join(f"{r}={v / SECONDS:.0f}" for r, v in reasons.items() if v)
                rps = re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)
                p50 = re.search(r"\s50%\s+(\S+)", out).group(1)
                p99 = re.search(r"\s99%\s+(\S+)", out).group(1)
                print(f"{policy} {connections} {rps} {p50} {p99} {explained:.1f} {shed:.0f} {by}")
        finally:
            process.terminate()
            process.wait()


with tempfile.TemporaryDirectory() as tmp:
    cost(pathlib.Path(tmp))
    knee(pathlib.Path(tmp))

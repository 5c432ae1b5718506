"""The Grafana dashboard (configs/grafana/flywheel.json) and the Prometheus alert rules
(configs/prometheus/flywheel-alerts.yml) ask only for metrics a running gateway exports: every
metric name they use is in /metrics of a gateway serving a canary, a shadow, samples and labels
(or, for the few that need a fleet or a drift profile, declared in gateway/src/metrics.rs with
the condition stated here); promtool accepts the rules."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import urllib.request

import pytest

from conftest import ROOT, binary, read_addresses

NAME = re.compile(r"\bflywheel_[a-z_]+")
# Exported only where their feature runs: in a fleet (registry in object storage), or once a
# version with a reference profile serves tapped traffic.
CONDITIONAL = {
    "flywheel_controller_leader": "fleet",
    "flywheel_registry_syncs_total": "fleet",
    "flywheel_registry_store_requests_total": "fleet",
    "flywheel_sample_uploads_total": "fleet",
    "flywheel_drift_psi": "a reference profile",
    "flywheel_drift_ks_pvalue": "a reference profile",
}


def dashboard_exprs():
    board = json.loads((ROOT / "configs" / "grafana" / "flywheel.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"]]
    exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    return exprs


def rule_exprs():
    text = (ROOT / "configs" / "prometheus" / "flywheel-alerts.yml").read_text()
    # `expr: ...` single lines and `expr: |` blocks (the indented lines that follow).
    exprs, block = [], None
    for line in text.splitlines():
        if block is not None:
            if line.startswith(" " * 12):
                block.append(line.strip())
                continue
            exprs.append(" ".join(block))
            block = None
        stripped = line.strip()
        if stripped == "expr: |":
            block = []
        elif stripped.startswith("expr:"):
            exprs.append(stripped[len("expr:"):].strip())
    if block:
        exprs.append(" ".join(block))
    return exprs


def used_names(exprs):
    return {name for expr in exprs for name in NAME.findall(expr)}


def scraped_names(url):
    with urllib.request.urlopen(f"http://{url}/metrics") as r:
        text = r.read().decode()
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r), dict(r.headers)


def test_every_metric_the_dashboard_and_rules_use_is_exported():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        repo = tmp / "models"
        subprocess.run([binary("make-model-repo"), str(repo)], check=True, capture_output=True)
        for alias, version in (("champion", "1"), ("challenger", "2")):
            subprocess.run([binary("registry"), "--root", str(repo), "alias", "set", "tiny", alias, version], check=True, capture_output=True)
        (tmp / "gateway.toml").write_text(
            "[sampling]\nrate = 1.0\n"
            "[models.tiny.rollout]\nchampion = \"champion\"\ncanary = { version = \"challenger\", weight = 50 }\n"
            "shadow = { version = \"challenger\", fraction = 1.0 }\n"
            "[models.tiny.rollout.policy]\nsteps = [50, 100]\nmin_dwell_ms = 600000\n"
        )
        process = subprocess.Popen(
            [binary("gateway"), "--config", str(tmp / "gateway.toml"), "--model-repository", str(repo), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, env={**os.environ, "FLYWHEEL_LOG": "warn"}, text=True,
        )
        try:
            url, _ = read_addresses(process, grpc=False)
            ids = []
            for i in range(40):
                body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [[i / 40] * 16]}]}
                _, headers = post(f"http://{url}/v2/models/tiny/infer", body)
                ids.append(headers["x-flywheel-request-id"])
            post(f"http://{url}/v2/models/tiny/feedback", {"labels": [{"id": rid, "label": float(n % 2)} for n, rid in enumerate(ids)]})
            exported = scraped_names(url)
        finally:
            process.terminate()
            process.wait(timeout=20)
    declared = set(NAME.findall((ROOT / "gateway" / "src" / "metrics.rs").read_text()))
    used = used_names(dashboard_exprs()) | used_names(rule_exprs())
    assert len(used) >= 25, f"the dashboard and rules use {len(used)} metrics: the expressions were not read"
    missing = {n for n in used - exported if n not in CONDITIONAL}
    assert not missing, f"used by the dashboard or rules but not exported: {sorted(missing)}"
    undeclared = {n for n in used if n in CONDITIONAL and n not in declared}
    assert not undeclared, f"conditional metrics that the gateway does not declare: {sorted(undeclared)}"


def test_promtool_accepts_the_alert_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/setup-test-tools.sh installs Debian's prometheus package")
    rules = ROOT / "configs" / "prometheus" / "flywheel-alerts.yml"
    done = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 7 rules found" in done.stdout, done.stdout

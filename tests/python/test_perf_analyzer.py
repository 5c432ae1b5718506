"""perf_analyzer (the binary from the tritonclient 2.35.0 wheel), unmodified, against the
gateway: short concurrency sweeps over HTTP and gRPC (unary and streaming) must complete and exit 0."""

import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "perf_analyzer"


def run_perf_analyzer(gateway, *args, protocol="http"):
    env = {**os.environ, "LD_LIBRARY_PATH": str(TOOLS / "lib")}
    url = gateway.url if protocol == "http" else gateway.grpc_url
    command = [str(TOOLS / "perf_analyzer"), "-u", url, "-i", protocol, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)


def test_concurrency_sweep(gateway):
    # perf_analyzer 2.35 always sends binary tensors; the JSON path is covered by tritonclient.
    done = run_perf_analyzer(
        gateway, "-m", "tiny", "--concurrency-range", "1:4:3",
        "--measurement-interval", "500", "--stability-percentage", "100", "--max-trials", "4",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Concurrency: 4, throughput:" in done.stdout, done.stdout


def test_batched_requests_on_the_heavy_model(gateway):
    done = run_perf_analyzer(
        gateway, "-m", "heavy", "-b", "8", "--concurrency-range", "2",
        "--measurement-interval", "500", "--stability-percentage", "100", "--max-trials", "3",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Server:" in done.stdout, "perf_analyzer read the server-side statistics"


def test_concurrency_sweep_over_grpc(gateway):
    done = run_perf_analyzer(
        gateway, "-m", "tiny", "--concurrency-range", "1:4:3",
        "--measurement-interval", "500", "--stability-percentage", "100", "--max-trials", "6", protocol="grpc",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Concurrency: 4, throughput:" in done.stdout, done.stdout
    assert "Server:" in done.stdout, "perf_analyzer read the server-side statistics over gRPC"


def test_streaming_over_grpc(gateway):
    done = run_perf_analyzer(
        gateway, "--streaming", "-m", "heavy", "-b", "4", "--concurrency-range", "2",
        "--measurement-interval", "500", "--stability-percentage", "100", "--max-trials", "6", protocol="grpc",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Concurrency: 2, throughput:" in done.stdout, done.stdout

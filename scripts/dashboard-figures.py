"""Figures for /dashboard (issue 16): page weight, time to first render against a loaded
gateway, and the cost of serving dashboards (gateway p99 and CPU with five open vs none).

    .venv/bin/python scripts/dashboard-figures.py <release target dir> [rounds]

Runs `trainer demo --keep-serving` with the gateway pinned to CPU 1 (so the dashboards have a
real loop to show), then drives load with wrk and opens headless Chromium pages on CPU 0: what
is measured is the gateway's cost of answering the pages' polls, not the browsers' own work.
Needs wrk and chromium (Debian) and websocket-client (in .venv via setup-test-tools.sh)."""

import json
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from test_dashboard import Browser  # noqa: E402

BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 12], "datatype": "FP32", "data": [0.1] * 12}]})


def wrk(base, seconds, lua):
    out = subprocess.run(
        ["taskset", "-c", "0", "wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", "-s", lua,
         f"{base}/v2/models/fraud/infer"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def quantile(q):
        value, unit = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1, "ms": 1000, "s": 1e6}[unit]
    return rps, quantile(50), quantile(99)


def cpu_seconds(pid):
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def open_pages(n, address, tmp):
    browsers = []
    for i in range(n):
        b = Browser(f"{tmp}/profile-{len(browsers)}-{time.time_ns()}", pin_cpu="0")
        b.call("Page.navigate", url=address)
        browsers.append(b)
    return browsers


def main():
    release = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "target" / "release")
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    with tempfile.TemporaryDirectory() as tmp:
        lua = pathlib.Path(tmp) / "post.lua"
        lua.write_text(f'wrk.method = "POST"\nwrk.headers["content-type"] = "application/json"\nwrk.body = \'{BODY}\'\n')
        demo = subprocess.Popen(
            ["taskset", "-c", "1", str(release / "trainer"), "demo", "--dir", f"{tmp}/demo", "--gateway",
             str(release / "gateway"), "--keep-serving"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        address = None
        for line in demo.stdout:
            found = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/dashboard)", line)
            address = address or (found and found.group(1))
            if "keeps serving" in line:
                break
        base = address.rsplit("/", 1)[0]
        gateway_pid = int(subprocess.run(["pgrep", "-f", f"gateway.*{tmp}/demo"], capture_output=True, text=True).stdout.split()[0])
        try:
            files = {name: len(urllib.request.urlopen(f"{address}{name}").read()) for name in ["", "/app.js", "/app.css"]}
            polls = {path: len(urllib.request.urlopen(base + path).read()) for path in
                     ["/admin/routing", "/admin/history/fraud", "/admin/drift/fraud", "/admin/audit?model=fraud&limit=500",
                      "/admin/runs/fraud"]}
            print(f"page weight: {sum(files.values())} bytes ({files}), uncompressed, no other request")
            print(f"one poll's data after the demo: {sum(polls.values())} bytes {polls}")

            # Time to first render while wrk loads the gateway.
            load = subprocess.Popen(["taskset", "-c", "0", "wrk", "-t1", "-c16", "-d60s", "-s", str(lua),
                                     f"{base}/v2/models/fraud/infer"], stdout=subprocess.DEVNULL)
            renders = []
            for _ in range(5):
                (b,) = open_pages(1, address, tmp)
                deadline = time.time() + 20
                value = None
                while value is None and time.time() < deadline:
                    time.sleep(0.05)
                    value = b.evaluate("(document.body && document.body.dataset.firstRenderMs) || null")
                renders.append(float(value))
                b.close()
            load.terminate()
            load.wait()
            print(f"time to first render under load (wrk -c16): median {statistics.median(renders):.0f} ms, "
                  f"all {[round(r) for r in renders]}")

            print("round  dashboards  req/s     p50 µs   p99 µs   gateway CPU idle (s per 10 s)")
            for r in range(rounds):
                for n in (0, 5):
                    pages = open_pages(n, address, tmp)
                    time.sleep(3)
                    before = cpu_seconds(gateway_pid)
                    time.sleep(10)
                    idle = cpu_seconds(gateway_pid) - before
                    rps, p50, p99 = wrk(base, 10, str(lua))
                    for p in pages:
                        p.close()
                    print(f"{r:5}  {n:10}  {rps:8.0f}  {p50:7.0f}  {p99:7.0f}  {idle:.3f}")
        finally:
            demo.terminate()
            demo.wait(timeout=30)


if __name__ == "__main__":
    main()

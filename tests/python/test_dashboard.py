"""The dashboard in a real browser: headless Chromium (Debian), driven over the DevTools
protocol, watches `/dashboard` of a gateway running the demo's loop (`trainer demo
--keep-serving`). The page must show the champion, a canary step, drift events and the quality
chart, and after the promotion the new champion without a reload. A screenshot is kept in
$FLYWHEEL_TEST_ARTIFACTS (default target/test-artifacts)."""

import base64
import itertools
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest
import websocket

from conftest import ROOT, TARGET, binary

ARTIFACTS = pathlib.Path(os.environ.get("FLYWHEEL_TEST_ARTIFACTS", TARGET / "test-artifacts"))


class Browser:
    """One headless Chromium with one page, spoken to over its DevTools websocket."""

    def __init__(self, profile, pin_cpu=None):
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if not chromium:
            pytest.fail("chromium is missing: scripts/setup-test-tools.sh installs it (apt-get install chromium)")
        pin = ["taskset", "-c", pin_cpu] if pin_cpu else []
        self.process = subprocess.Popen(
            [*pin, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "--window-size=1400,2200", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = pathlib.Path(profile) / "DevToolsActivePort"
        deadline = time.time() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.time() > deadline or self.process.poll() is not None:
                self.close()
                pytest.fail("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method, **params):
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.socket.recv())
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path):
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self):
        try:
            self.socket.close()
        except Exception:
            pass
        self.process.kill()
        self.process.wait(timeout=10)


# What the test reads off the page each second (null while the page is still loading).
PAGE_STATE = """(() => { try { return JSON.stringify({
  marker: window.__testMarker || null,
  status: document.getElementById('status').textContent,
  champion: document.getElementById('champion').dataset.version || null,
  canaryWeight: document.getElementById('canary').dataset.weight || null,
  steps: [...document.querySelectorAll('#rollout-timeline li[data-action]')].map(li => li.dataset.action),
  driftEvents: document.querySelectorAll('#drift-events li[data-feature]').length,
  driftFeatures: document.querySelectorAll('#drift-features tbody tr').length,
  qualityPoints: Number(document.getElementById('chart-auc').dataset.points || 0),
  qualityLines: document.querySelectorAll('#chart-auc path.series').length,
  promoteMarks: document.querySelectorAll('#chart-auc line.mark.promote').length,
  runs: document.querySelectorAll('#runs tbody tr .badge').length,
}); } catch (e) { return null; } })()"""


def test_the_dashboard_follows_the_loop_live_in_a_browser():
    with tempfile.TemporaryDirectory() as tmp:
        demo = subprocess.Popen(
            [binary("trainer"), "demo", "--dir", f"{tmp}/demo", "--gateway", binary("gateway"), "--rate", "200",
             "--before-s", "10", "--after-s", "4", "--max-s", "150", "--bootstrap-rows", "8000", "--keep-serving"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "FLYWHEEL_LOG": "warn"},
        )
        lines = []
        address = None
        deadline = time.time() + 120
        while address is None and time.time() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/dashboard)", line)
            address = found and found.group(1)
        if address is None:
            demo.kill()
            pytest.fail("the demo printed no dashboard address:\n" + "".join(lines))
        # The rest of the demo's output, read beside the browser.
        reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
        reader.start()
        browser = Browser(f"{tmp}/chromium")
        try:
            browser.call("Page.enable")
            browser.call("Page.navigate", url=address)
            seen = {"champions": [], "canary_weights": set(), "steps": set(), "drift": 0, "quality": 0}
            marked = False
            state = {}
            deadline = time.time() + 240
            while time.time() < deadline:
                time.sleep(1)
                read = browser.evaluate(PAGE_STATE)
                if read is None:
                    continue
                state = json.loads(read)
                if marked:
                    assert state["marker"] == "first load", f"the page reloaded: {state}"
                if not marked and state["champion"]:
                    # Set once: if the page ever reloads, the marker is gone.
                    browser.evaluate("window.__testMarker = 'first load'")
                    marked = True
                if state["champion"] and (not seen["champions"] or seen["champions"][-1] != state["champion"]):
                    seen["champions"].append(state["champion"])
                if state["canaryWeight"]:
                    seen["canary_weights"].add(state["canaryWeight"])
                seen["steps"].update(state["steps"])
                seen["drift"] = max(seen["drift"], state["driftEvents"])
                seen["quality"] = max(seen["quality"], state["qualityPoints"])
                promoted = len(seen["champions"]) >= 2 and state["promoteMarks"] > 0
                if promoted and state["runs"] > 0:
                    break
            browser.screenshot(ARTIFACTS / "dashboard.png")
            output = "".join(lines)
            assert state, f"the page never loaded\n{output}"
            assert state["status"] == "live", state
            assert seen["champions"][:1] == ["1"], f"the page showed the first champion: {seen}\n{output}"
            assert len(seen["champions"]) >= 2 and seen["champions"][-1] != "1", \
                f"after the promotion the page showed the new champion without a reload: {seen}\n{output}"
            assert seen["canary_weights"], f"the page showed a canary step: {seen}"
            assert {"set_weight", "advance", "promote"} <= seen["steps"], f"the rollout's steps: {seen}"
            assert seen["drift"] >= 1, f"at least one drift event: {seen}"
            assert state["driftFeatures"] >= 12, f"the current window's per-feature statistics: {state}"
            assert seen["quality"] > 5 and state["qualityLines"] >= 1, f"the quality chart has points: {seen}"
            assert state["promoteMarks"] >= 1, f"the promotion is marked on the quality chart: {state}"
            # --keep-serving: once the demo is over, the gateway still serves the page.
            deadline = time.time() + 90
            while time.time() < deadline and not any("keeps serving" in line for line in lines):
                time.sleep(0.5)
            assert any("keeps serving" in line for line in lines), "".join(lines)
            with urllib.request.urlopen(address, timeout=10) as page:
                assert page.status == 200 and b"/dashboard/app.js" in page.read()
        finally:
            browser.close()
            os.killpg(demo.pid, signal.SIGTERM)
            try:
                demo.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, signal.SIGKILL)
        assert demo.returncode == 0, "".join(lines)

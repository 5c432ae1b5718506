"""Starts the real gateway binary on 127.0.0.1:0 over a freshly written model repository."""

import os
import pathlib
import subprocess
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def binary(name: str) -> str:
    path = pathlib.Path(os.environ.get(f"FLYWHEEL_{name.upper().replace('-', '_')}_BIN", TARGET / "debug" / name))
    if not path.exists():
        pytest.fail(f"{path} is missing: build the workspace first (cargo build)")
    return str(path)


class Gateway:
    def __init__(self, process, url, repo):
        self.process = process
        self.url = url  # host:port, as tritonclient wants it
        self.repo = repo


@pytest.fixture(scope="session")
def gateway():
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp) / "models"
        subprocess.run([binary("make-model-repo"), str(repo), "--heavy"], check=True, capture_output=True)
        # Every version loads (Triton's default policy would load only the latest of each model).
        config = pathlib.Path(tmp) / "gateway.toml"
        config.write_text('version_policy = "all"\n')
        process = subprocess.Popen(
            [binary("gateway"), "--config", str(config), "--model-repository", str(repo), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            env={**os.environ, "FLYWHEEL_LOG": "warn"},
            text=True,
        )
        line = process.stdout.readline().strip()
        prefix = "flywheel gateway listening on http://"
        if not line.startswith(prefix):
            process.kill()
            pytest.fail(f"gateway did not start; it printed {line!r}")
        try:
            yield Gateway(process, line[len(prefix):], repo)
        finally:
            process.terminate()
            process.wait(timeout=20)

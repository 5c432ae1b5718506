"""Starts the real gateway binary on 127.0.0.1:0 over a freshly written model repository."""

import os
import pathlib
import subprocess
import tempfile

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def binary(name: str) -> str:
    path = pathlib.Path(os.environ.get(f"FLYWHEEL_{name.upper().replace('-', '_')}_BIN", TARGET / "debug" / name))
    if not path.exists():
        pytest.fail(f"{path} is missing: build the workspace first (cargo build)")
    return str(path)


class Gateway:
    def __init__(self, process, url, repo, grpc_url=None):
        self.process = process
        self.url = url  # host:port, as tritonclient wants it
        self.repo = repo
        self.grpc_url = grpc_url  # host:port of the gRPC port


def read_addresses(process, grpc=True):
    """The HTTP and (with `grpc`) gRPC host:port the gateway printed, in that order."""
    found = []
    for scheme in ("http", "grpc") if grpc else ("http",):
        line = process.stdout.readline().strip()
        prefix = f"flywheel gateway listening on {scheme}://"
        if not line.startswith(prefix):
            process.kill()
            pytest.fail(f"gateway did not start its {scheme} port; it printed {line!r}")
        found.append(line[len(prefix):])
    return found[0], (found[1] if grpc else None)


@pytest.fixture(scope="session")
def gateway():
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp) / "models"
        subprocess.run([binary("make-model-repo"), str(repo), "--heavy"], check=True, capture_output=True)
        # Every version loads (Triton's default policy would load only the latest of each model).
        config = pathlib.Path(tmp) / "gateway.toml"
        config.write_text('version_policy = "all"\n')
        process = subprocess.Popen(
            [binary("gateway"), "--config", str(config), "--model-repository", str(repo), "--listen", "127.0.0.1:0",
             "--grpc-listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            env={**os.environ, "FLYWHEEL_LOG": "warn"},
            text=True,
        )
        http, grpc = read_addresses(process)
        try:
            yield Gateway(process, http, repo, grpc)
        finally:
            process.terminate()
            process.wait(timeout=20)


# multi_io: one input of every datatype the gateway serves, and the outputs the model makes of them.
MULTI_IO_FEEDS = {
    "a": np.array([[1.5, 2, 3], [4, 5, 6]], dtype=np.float32),
    "b": np.array([[1.25, -2], [3, 4]], dtype=np.float64),
    "c": np.array([[1, -2], [3, 4]], dtype=np.int32),
    "d": np.array([[2**53 + 1], [-5]], dtype=np.int64),
    "e": np.array([[True, False], [False, True]]),
    "f": np.array([[0, 255], [7, 8]], dtype=np.uint8),
    "g": np.array([[-128, 127], [0, 1]], dtype=np.int8),
    "s": np.array([["héllo".encode()], [b"world"]], dtype=np.object_),
}
MULTI_IO_TYPES = {"a": "FP32", "b": "FP64", "c": "INT32", "d": "INT64", "e": "BOOL", "f": "UINT8", "g": "INT8", "s": "BYTES"}


def check_multi_io(repo, result):
    """Every output of a multi_io answer equals ONNX Runtime's on the same inputs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(repo / "multi_io" / "1" / "model.onnx"))
    ort_feeds = {**MULTI_IO_FEEDS, "s": np.array([["héllo"], ["world"]], dtype=np.object_)}
    names = ["a_twice", "b_neg", "c_twice", "d_copy", "e_not", "f_copy", "g_copy", "s_copy"]
    for name, expected in zip(names, session.run(None, ort_feeds)):
        got = result.as_numpy(name)
        if name == "s_copy":
            assert [x.decode() if isinstance(x, bytes) else x for x in got.ravel()] == list(expected.ravel())
        else:
            np.testing.assert_array_equal(got, expected)

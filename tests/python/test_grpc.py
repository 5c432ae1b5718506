"""The current tritonclient[grpc], unmodified, against the gateway's gRPC port; answers are checked
against ONNX Runtime's Python API on the same model file. Typed `contents`, response metadata and
the health service are spoken to with grpcio directly, as Go, Java or Envoy clients would."""

import os
import pathlib
import queue
import signal
import subprocess
import tempfile
import time

import grpc
import numpy as np
import onnxruntime
import pyarrow.dataset as ds
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from conftest import MULTI_IO_FEEDS, MULTI_IO_TYPES, binary, check_multi_io, read_addresses


def client(gateway):
    return grpcclient.InferenceServerClient(url=gateway.grpc_url)


def reference(repo, model, version, feeds):
    session = onnxruntime.InferenceSession(str(repo / model / str(version) / "model.onnx"))
    return session.run(None, feeds)


def tiny_input(rows):
    inp = grpcclient.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    return inp


def test_health_metadata_config_and_index(gateway):
    c = client(gateway)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("tiny") and c.is_model_ready("tiny", "1")
    assert not c.is_model_ready("missing") and not c.is_model_ready("tiny", "9")
    server = c.get_server_metadata(as_json=True)
    assert server["name"] == "flywheel" and "statistics" in server["extensions"]
    meta = c.get_model_metadata("tiny", as_json=True)
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "16"]}]
    config = c.get_model_config("tiny", as_json=True)["config"]
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": ["16"]}]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    index = c.get_model_repository_index(as_json=True)["models"]
    assert {"name": "tiny", "version": "2", "state": "READY"} in index


@pytest.mark.parametrize("rows", [1, 5, 64])
def test_infer_matches_onnxruntime(gateway, rows):
    c = client(gateway)
    x = np.random.default_rng(rows).normal(size=(rows, 16)).astype(np.float32)
    result = c.infer("tiny", [tiny_input(x)], model_version="1", request_id=f"g-{rows}")
    (expected,) = reference(gateway.repo, "tiny", 1, {"input": x})
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-6, atol=1e-6)
    response = result.get_response()
    assert response.id == f"g-{rows}" and response.model_version == "1"


def test_every_datatype_through_tritonclient(gateway):
    inputs = []
    for name, value in MULTI_IO_FEEDS.items():
        inp = grpcclient.InferInput(name, list(value.shape), MULTI_IO_TYPES[name])
        inp.set_data_from_numpy(value)
        inputs.append(inp)
    check_multi_io(gateway.repo, client(gateway).infer("multi_io", inputs))

def test_typed_contents_and_response_metadata_with_grpcio(gateway):
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        x = np.arange(32, dtype=np.float32).reshape(2, 16) / 32
        request = service_pb2.ModelInferRequest(model_name="tiny", model_version="2", id="typed")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 16])
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
        response, call = stub.ModelInfer.with_call(request, metadata=[("x-request-id", "client-7")])
        meta = dict(call.initial_metadata())
        assert meta["x-model-version"] == "2" and meta["x-flywheel-arm"] == "explicit"
        assert meta["x-request-id"] == "client-7" and len(meta["x-flywheel-request-id"]) == 32
        assert "compute;dur=" in meta["server-timing"]
        got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(2, 1)
        (expected,) = reference(gateway.repo, "tiny", 2, {"input": x})
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
        assert response.id == "typed" and response.outputs[0].shape == [2, 1]


def test_errors_carry_the_grpc_code_and_the_http_message(gateway):
    c = client(gateway)
    wrong = grpcclient.InferInput("wrong", [1, 16], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="unknown input 'wrong'") as e:
        c.infer("tiny", [wrong])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as e:
        c.infer("nope", [tiny_input(np.zeros((1, 16), dtype=np.float32))])
    assert e.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as e:
        c.get_system_shared_memory_status()
    assert e.value.status() == "StatusCode.UNIMPLEMENTED"


def test_a_stream_answers_every_request_in_order_good_and_bad_interleaved(gateway):
    c = client(gateway)
    answers = queue.Queue()
    c.start_stream(callback=lambda result, error: answers.put((result, error)))
    rng = np.random.default_rng(3)
    sent = []
    for i in range(20):
        if i % 3 == 2:
            bad = grpcclient.InferInput("input", [1, 15], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 15), dtype=np.float32))
            c.async_stream_infer("tiny", [bad], request_id=f"s{i}", model_version="1")
            sent.append((f"s{i}", None))
        else:
            x = rng.normal(size=(1 + i % 4, 16)).astype(np.float32)
            c.async_stream_infer("tiny", [tiny_input(x)], request_id=f"s{i}", model_version="1")
            sent.append((f"s{i}", x))
    got = [answers.get(timeout=30) for _ in sent]
    c.stop_stream()
    for (rid, x), (result, error) in zip(sent, got):
        if x is None:
            assert result is None and "input" in error.message(), (rid, error)
        else:
            assert error is None, (rid, error)
            assert result.get_response().id == rid, "answers come in the order of the requests"
            (expected,) = reference(gateway.repo, "tiny", 1, {"input": x})
            np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-6, atol=1e-6)


def test_statistics_count_grpc_requests_like_http(gateway):
    c = client(gateway)
    before = c.get_inference_statistics("tiny", "1", as_json=True)["model_stats"][0]
    for _ in range(3):
        c.infer("tiny", [tiny_input(np.ones((2, 16), dtype=np.float32))], model_version="1")
    after = c.get_inference_statistics("tiny", "1", as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 6
    assert int(after["inference_stats"]["success"]["count"]) >= 3


def health(channel, service=""):
    """grpc.health.v1.Health/Check by hand: HealthCheckRequest{service} -> status (1 SERVING, 2 NOT_SERVING)."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
    name = service.encode()
    reply = check((b"\x0a" + bytes([len(name)]) + name) if name else b"", timeout=5)
    return reply[1] if reply else 0


def start_tiny(tmp, aliases, config):
    """A gateway over a fresh tiny repository with `aliases` set and `config`, on both ports."""
    repo = tmp / "models"
    subprocess.run([binary("make-model-repo"), str(repo)], check=True, capture_output=True)
    for alias, version in aliases.items():
        subprocess.run([binary("registry"), "--root", str(repo), "alias", "set", "tiny", alias, version], check=True)
    (tmp / "gateway.toml").write_text(config)
    return subprocess.Popen(
        [binary("gateway"), "--config", str(tmp / "gateway.toml"), "--model-repository", str(repo),
         "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, env={**os.environ, "FLYWHEEL_LOG": "warn"}, text=True,
    )


@pytest.fixture(scope="module")
def rollout():
    """A gateway whose tiny model runs a 50% canary with every request sampled, a small
    gRPC message limit, and a drain delay long enough to look at."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        process = start_tiny(
            tmp,
            {"champion": "1", "challenger": "2"},
            "grpc_max_message_bytes = 4096\n"
            "[server]\ndrain_delay_ms = 3000\n"
            "[sampling]\nrate = 1.0\nmax_file_age_ms = 500\n"
            "[models.tiny.rollout]\nchampion = \"champion\"\ncanary = { version = \"challenger\", weight = 50 }\n",
        )
        http, grpc_url = read_addresses(process)
        try:
            yield process, grpc_url, tmp / "samples"
        finally:
            process.kill()
            process.wait(timeout=20)


def test_canary_routing_and_samples_through_grpc(rollout):
    _, url, samples = rollout
    versions, ids = {}, {}
    with grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for i in range(60):
            request = service_pb2.ModelInferRequest(model_name="tiny")
            request.inputs.add(name="input", datatype="FP32", shape=[1, 16])
            request.raw_input_contents.append(np.full((1, 16), i / 60, dtype=np.float32).tobytes())
            _, call = stub.ModelInfer.with_call(request)
            meta = dict(call.initial_metadata())
            versions[meta["x-flywheel-request-id"]] = (meta["x-model-version"], meta["x-flywheel-arm"])
    arms = {arm for _, arm in versions.values()}
    assert arms == {"champion", "canary"}, "both arms answer gRPC requests"
    assert {v for v, arm in versions.values() if arm == "canary"} == {"2"}
    deadline = time.time() + 20
    while True:
        files = list(samples.glob("samples/model=tiny/**/*.parquet"))
        table = ds.dataset([str(f) for f in files], format="parquet").to_table() if files else None
        stored = {} if table is None else dict(zip(table["request_id"].to_pylist(), table["version"].to_pylist()))
        if set(versions) <= set(stored) or time.time() > deadline:
            break
        time.sleep(0.3)
    missing = set(versions) - set(stored)
    assert not missing, f"{len(missing)} gRPC requests not in the samples"
    assert all(str(stored[rid]) == v for rid, (v, _) in versions.items()), "each sample names its answering version"


def test_an_oversized_message_is_resource_exhausted(rollout):
    _, url, _ = rollout
    c = grpcclient.InferenceServerClient(url=url)
    big = tiny_input(np.zeros((64, 16), dtype=np.float32))  # 4 KiB of floats, over the 4096-byte limit with framing
    with pytest.raises(InferenceServerException, match="grpc_max_message_bytes") as e:
        c.infer("tiny", [big])
    assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"


def test_draining_reports_not_serving_while_still_answering_then_goes_away(rollout):
    process, url, _ = rollout
    with grpc.insecure_channel(url) as channel:
        assert health(channel) == 1 and health(channel, "inference.GRPCInferenceService") == 1
        with pytest.raises(grpc.RpcError) as e:
            health(channel, "no.such.Service")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # A stream open when the drain begins is ended (UNAVAILABLE) after its answers, so it
    # neither holds the drain up nor keeps sending here.
    streamed = queue.Queue()
    c = grpcclient.InferenceServerClient(url=url)
    c.start_stream(callback=lambda result, error: streamed.put((result, error)))
    c.async_stream_infer("tiny", [tiny_input(np.ones((1, 16), dtype=np.float32))], request_id="before")
    result, error = streamed.get(timeout=10)
    assert error is None and result.get_response().id == "before"
    process.send_signal(signal.SIGTERM)
    result, error = streamed.get(timeout=10)
    assert result is None and "shutting down" in error.message(), error
    c.stop_stream()
    time.sleep(0.3)
    # New connections during the drain delay are still answered (and each is sent GOAWAY, so
    # a client that can go elsewhere does): health says NOT_SERVING, inference still works.
    statuses, answered = [], 0
    for _ in range(5):
        with grpc.insecure_channel(url) as channel:
            try:
                statuses.append(health(channel))
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                request = service_pb2.ModelInferRequest(model_name="tiny")
                request.inputs.add(name="input", datatype="FP32", shape=[1, 16])
                request.raw_input_contents.append(np.ones((1, 16), dtype=np.float32).tobytes())
                answered += len(stub.ModelInfer(request, timeout=5).raw_output_contents) == 1
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
    assert statuses and set(statuses) == {2}, f"NOT_SERVING while draining: {statuses}"
    assert answered > 0, "requests during the drain delay are still answered"
    assert process.wait(timeout=20) == 0, "a clean drain"


def test_a_shadow_mirrors_grpc_requests_compared_and_stored_never_returned():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        process = start_tiny(
            tmp,
            {"champion": "2"},
            "[sampling]\nrate = 1.0\nmax_file_age_ms = 500\n"
            "[models.tiny.rollout]\nchampion = \"champion\"\nshadow = { version = \"1\", fraction = 1.0 }\n",
        )
        try:
            http, url = read_addresses(process)
            ids = set()
            with grpc.insecure_channel(url) as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                for i in range(10):
                    request = service_pb2.ModelInferRequest(model_name="tiny")
                    request.inputs.add(name="input", datatype="FP32", shape=[1, 16])
                    request.raw_input_contents.append(np.full((1, 16), 0.2, dtype=np.float32).tobytes())
                    response, call = stub.ModelInfer.with_call(request)
                    meta = dict(call.initial_metadata())
                    assert (response.model_version, meta["x-flywheel-arm"]) == ("2", "champion"), "never the shadow's answer"
                    ids.add(meta["x-flywheel-request-id"])
            import json
            import urllib.request

            def pairs():
                with urllib.request.urlopen(f"http://{http}/admin/routing") as r:
                    models = json.load(r)["models"]
                return next(m for m in models if m["name"] == "tiny")["evidence"]["shadow"]["pairs"]

            deadline = time.time() + 10
            while pairs() < 10 and time.time() < deadline:
                time.sleep(0.2)
            assert pairs() == 10, "every mirrored gRPC request was compared"
        finally:
            process.terminate()
            process.wait(timeout=20)
        table = ds.dataset(str(tmp / "samples" / "samples"), format="parquet", partitioning="hive").to_table()
        rows = set(zip(table["request_id"].to_pylist(), table["arm"].to_pylist(), table["version"].to_pylist()))
        expected = {(rid, "champion", 2) for rid in ids} | {(rid, "shadow", 1) for rid in ids}
        assert expected <= rows, "both answers of each mirrored request are in the samples"

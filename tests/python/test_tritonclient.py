"""The current tritonclient[http], unmodified, against the gateway; answers are checked against
ONNX Runtime's Python API on the same model file (an independent reference)."""

import numpy as np
import onnxruntime
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException
import pytest

from conftest import MULTI_IO_FEEDS, MULTI_IO_TYPES, check_multi_io


def client(gateway):
    return httpclient.InferenceServerClient(url=gateway.url)


def reference(gateway, model, version, feeds):
    session = onnxruntime.InferenceSession(str(gateway.repo / model / str(version) / "model.onnx"))
    return session.run(None, feeds)


def test_health_and_metadata(gateway):
    c = client(gateway)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("tiny") and c.is_model_ready("tiny", "1")
    assert not c.is_model_ready("missing")
    meta = c.get_model_metadata("tiny")
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
    config = c.get_model_config("tiny")
    assert config["max_batch_size"] == 64
    assert c.get_server_metadata()["name"] == "flywheel"


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_infer_matches_onnxruntime(gateway, binary_in, binary_out):
    c = client(gateway)
    rows = np.random.default_rng(7).normal(size=(5, 16)).astype(np.float32)
    inp = httpclient.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows, binary_data=binary_in)
    out = httpclient.InferRequestedOutput("output", binary_data=binary_out)
    result = c.infer("tiny", [inp], outputs=[out], request_id="abc-1", model_version="1")
    got = result.as_numpy("output")
    (expected,) = reference(gateway, "tiny", 1, {"input": rows})
    assert got.shape == (5, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    response = result.get_response()
    assert response["id"] == "abc-1" and response["model_version"] == "1"


def test_every_datatype_through_tritonclient(gateway):
    inputs = []
    for i, (name, value) in enumerate(MULTI_IO_FEEDS.items()):
        inp = httpclient.InferInput(name, list(value.shape), MULTI_IO_TYPES[name])
        inp.set_data_from_numpy(value, binary_data=i % 2 == 0)
        inputs.append(inp)
    check_multi_io(gateway.repo, client(gateway).infer("multi_io", inputs))

def test_errors_surface_as_exceptions_with_the_message(gateway):
    c = client(gateway)
    inp = httpclient.InferInput("wrong", [1, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="unknown input 'wrong'"):
        c.infer("tiny", [inp])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        c.get_model_metadata("nope")


def test_statistics(gateway):
    stats = client(gateway).get_inference_statistics("tiny")
    assert any(s["inference_count"] > 0 for s in stats["model_stats"])

"""Explanations: the gateway's Shapley attributions (POST /v2/models/{m}/explain) of
scikit-learn models exported with skl2onnx agree with the shap package's exact explainer on the
same model and background, add up to the prediction minus the background mean, and the sampling
estimator (above explain.exact_max_features) stays within its stated standard error."""

import json
import os
import pathlib
import subprocess
import tempfile
import urllib.error
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest
import shap
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from conftest import binary, read_addresses

BACKGROUND_ROWS = 40
# float32 inputs, float64 sums on both sides: agreement to well below a probability's display.
TOLERANCE = 1e-5


def dataset(features, rows=600, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    w = rng.normal(size=features)
    logit = x @ w + 1.5 * x[:, 0] * x[:, 1] - np.abs(x[:, 2])
    y = (logit + rng.normal(scale=0.5, size=rows) > 0).astype(np.int64)
    return x, y


def export(clf, x):
    onx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    return onx.SerializeToString()


def registry_cli(repo, *args):
    subprocess.run([binary("registry"), "--root", str(repo), *args], check=True, capture_output=True)


def publish(repo, tmp, name, onnx_bytes, background, reversed_columns=False):
    path = tmp / f"{name}.onnx"
    path.write_bytes(onnx_bytes)
    registry_cli(repo, "publish", name, str(path))
    if background is not None:
        csv = tmp / f"{name}.csv"
        columns = [f"in_X_{j}" for j in range(background.shape[1])]
        header = ",".join(reversed(columns) if reversed_columns else columns)
        np.savetxt(csv, background, delimiter=",", header=header, comments="", fmt="%.9g")
        registry_cli(repo, "profile", name, "1", "--rows", str(csv))


def shap_exact(onnx_bytes, background, rows):
    session = ort.InferenceSession(onnx_bytes)

    def score(z):
        return session.run(["probabilities"], {"X": np.asarray(z, dtype=np.float32)})[0][:, 1]

    masker = shap.maskers.Independent(background, max_samples=len(background))
    explained = shap.explainers.Exact(score, masker)(rows)
    return explained.values, explained.base_values


@pytest.fixture(scope="module")
def served():
    """A gateway over lr12 (logistic regression), gbm12 (gradient boosting), lr16 (sampled above
    the exact limit of 12), bare12 (no background); with the models, backgrounds and rows."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        repo = tmp / "models"
        models = {}
        x12, y12 = dataset(12)
        x16, y16 = dataset(16, seed=1)
        for name, clf, (x, y) in [
            ("lr12", LogisticRegression(max_iter=500), (x12, y12)),
            ("gbm12", GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0), (x12, y12)),
            ("lr16", LogisticRegression(max_iter=500), (x16, y16)),
        ]:
            clf.fit(x, y)
            onnx_bytes = export(clf, x)
            background = x[:BACKGROUND_ROWS].astype(np.float64)
            publish(repo, tmp, name, onnx_bytes, background)
            models[name] = (onnx_bytes, background.astype(np.float32), x[-3:])
        publish(repo, tmp, "bare12", models["lr12"][0], None)
        publish(repo, tmp, "reversed12", models["lr12"][0], models["lr12"][1].astype(np.float64), reversed_columns=True)
        config = tmp / "gateway.toml"
        config.write_text("[explain]\nexact_max_features = 12\npermutations = 400\nmax_evaluations = 1000000\n")
        process = subprocess.Popen(
            [binary("gateway"), "--config", str(config), "--model-repository", str(repo), "--listen", "127.0.0.1:0",
             "--grpc-listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            env={**os.environ, "FLYWHEEL_LOG": "warn"},
            text=True,
        )
        url, grpc_url = read_addresses(process)
        models["grpc"] = grpc_url
        try:
            yield url, models
        finally:
            process.terminate()
            process.wait(timeout=20)


def explain(url, model, rows):
    body = {"inputs": [{"name": "X", "shape": list(rows.shape), "datatype": "FP32", "data": rows.flatten().tolist()}]}
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/explain", data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("model", ["lr12", "gbm12"])
def test_exact_attributions_match_shap_and_add_up(served, model):
    url, models = served
    onnx_bytes, background, rows = models[model]
    status, answer = explain(url, model, rows)
    assert status == 200, answer
    explained = answer["explained"]
    assert (explained["output"], explained["column"], explained["method"]) == ("probabilities", 1, "exact")
    assert explained["background_rows"] == BACKGROUND_ROWS
    assert explained["evaluations_per_row"] == 2**12 * BACKGROUND_ROWS
    expected, base = shap_exact(onnx_bytes, background, rows)
    probabilities = next(o for o in answer["outputs"] if o["name"] == "probabilities")["data"][1::2]
    assert len(answer["explanations"]) == len(rows)
    for i, row in enumerate(answer["explanations"]):
        ours = np.array(row["attributions"])
        assert ours.shape == (12,)
        np.testing.assert_allclose(ours, expected[i], atol=TOLERANCE)
        assert abs(row["base_value"] - base[i]) < TOLERANCE
        # Additivity: the values sum to the prediction (the answer's own score) minus the base.
        assert abs(row["prediction"] - probabilities[i]) < 1e-6
        assert abs(ours.sum() - (row["prediction"] - row["base_value"])) < 1e-9
        top = [r["feature"] for r in row["top"]]
        assert top == list(np.argsort(-np.abs(ours), kind="stable")[:5]), row["top"]


def test_above_the_exact_limit_the_sampled_estimate_is_within_its_stated_error(served):
    url, models = served
    onnx_bytes, background, rows = models["lr16"]
    status, answer = explain(url, "lr16", rows[:2])
    assert status == 200, answer
    assert answer["explained"]["method"] == "sampled"
    expected, _ = shap_exact(onnx_bytes, background, rows[:2])
    for i, row in enumerate(answer["explanations"]):
        ours, se = np.array(row["attributions"]), np.array(row["standard_error"])
        assert abs(ours.sum() - (row["prediction"] - row["base_value"])) < 1e-9, "additive exactly"
        assert np.all(np.abs(ours - expected[i]) <= 4 * se + 1e-6), (ours - expected[i], se)
    assert answer["explained"]["max_standard_error"] < 0.01


def test_refusals_name_the_reason(served):
    """No background, a background in another column order, too many rows, too much work."""
    url, models = served
    status, answer = explain(url, "bare12", models["lr12"][2])
    assert status == 400
    assert "no background sample" in answer["error"] and "registry profile bare12 1" in answer["error"]
    status, answer = explain(url, "reversed12", models["lr12"][2])
    assert status == 400 and "at position 0 the profile has Some(\"in_X_11\")" in answer["error"], answer
    status, answer = explain(url, "lr12", np.zeros((17, 12), dtype=np.float32))
    assert status == 400 and "explain.max_rows" in answer["error"], answer
    status, answer = explain(url, "lr16", np.zeros((16, 16), dtype=np.float32))
    assert status == 400 and "over explain.max_evaluations (1000000)" in answer["error"], answer


def grpc_infer(grpc_url, model, rows, parameters):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    tensor = grpcclient.InferInput("X", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows.astype(np.float32))
    return client.infer(model, [tensor], parameters=parameters)


def test_grpc_explains_with_the_explain_parameter_as_http_does(served):
    """tritonclient.grpc, unmodified: parameters={"explain": True} adds the same JSON as HTTP's
    /explain in the response parameters; without it, none; a model that cannot be explained is
    INVALID_ARGUMENT with HTTP's message."""
    from tritonclient.utils import InferenceServerException

    url, models = served
    _, _, rows = models["lr12"]
    result = grpc_infer(models["grpc"], "lr12", rows, {"explain": True})
    parameters = result.get_response().parameters
    explained = json.loads(parameters["explained"].string_param)
    explanations = json.loads(parameters["explanations"].string_param)
    status, answer = explain(url, "lr12", rows)
    assert status == 200, answer
    assert explained["method"] == answer["explained"]["method"] == "exact"
    assert len(explanations) == len(rows)
    probabilities = result.as_numpy("probabilities")[:, 1]
    for i, (ours, http) in enumerate(zip(explanations, answer["explanations"])):
        np.testing.assert_allclose(ours["attributions"], http["attributions"], atol=1e-12)
        assert abs(ours["prediction"] - probabilities[i]) < 1e-6
        assert ours["top"] == http["top"]
    plain = grpc_infer(models["grpc"], "lr12", rows, None)
    assert "explanations" not in plain.get_response().parameters
    with pytest.raises(InferenceServerException) as refused:
        grpc_infer(models["grpc"], "bare12", rows, {"explain": True})
    assert "INVALID_ARGUMENT" in str(refused.value.status()) and "no background sample" in refused.value.message()

"""The Python peer the benchmarks compare against: what teams write today to serve an ONNX
model — FastAPI + uvicorn + onnxruntime, speaking the same Open Inference Protocol v2 JSON.

Serves the highest version of every model under $PEER_MODEL_REPOSITORY
(<model>/<version>/model.onnx), one ONNX Runtime intra-op thread per worker process.
"""

import os
import pathlib

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}
NAMES = {np.dtype(v).name: k for k, v in DTYPES.items()}


def load(root: pathlib.Path):
    models = {}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        versions = sorted((int(v.name), v) for v in model_dir.iterdir() if v.name.isdigit() and (v / "model.onnx").exists())
        if versions:
            version, path = versions[-1]
            models[model_dir.name] = (str(version), ort.InferenceSession(str(path / "model.onnx"), options))
    return models


MODELS = load(pathlib.Path(os.environ["PEER_MODEL_REPOSITORY"]))
app = FastAPI()


@app.get("/v2/health/ready")
def ready():
    return {"ready": True}


@app.post("/v2/models/{model}/infer")
async def infer(model: str, request: Request):
    if model not in MODELS:
        raise HTTPException(status_code=404, detail=f"unknown model '{model}'")
    version, session = MODELS[model]
    body = await request.json()
    try:
        feeds = {
            i["name"]: np.asarray(i["data"], dtype=DTYPES[i["datatype"]]).reshape(i["shape"]) for i in body["inputs"]
        }
        outputs = session.run(None, feeds)
    except Exception as e:  # the peer answers like the gateway: a 400 with the reason
        raise HTTPException(status_code=400, detail=str(e))
    names = [o.name for o in session.get_outputs()]
    return {
        "model_name": model,
        "model_version": version,
        "outputs": [
            {"name": n, "datatype": NAMES.get(o.dtype.name, "FP32"), "shape": list(o.shape), "data": o.ravel().tolist()}
            for n, o in zip(names, outputs)
        ],
    }

"""Bring-your-own training on a Ray cluster, for `trainer run --command` / `command = ...`:
the training rows (FLYWHEEL_TRAIN_PARQUET, written by the trainer from the fleet's Parquet
samples and labels) go into Ray's object store once, a grid of scikit-learn logistic
regressions is fitted in parallel Ray tasks, each scored on a held-out slice, and the best one
is exported to ONNX with skl2onnx, following the contract in docs/TRAINER.md.

    RAY_ADDRESS=head-node:6379 trainer run --command ".venv/bin/python scripts/byo/train_ray.py"

Without RAY_ADDRESS, Ray starts a local cluster for the run. Needs ray, numpy, pyarrow,
scikit-learn, skl2onnx and onnx (scripts/setup-test-tools.sh installs them).
"""

import json
import os
import sys

import numpy as np
import pyarrow.parquet as pq
import ray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from skl_export import export_probability  # noqa: E402

GRID = [0.01, 0.1, 1.0, 10.0]


@ray.remote
def fit(x, y, c, holdout):
    """One candidate on the cluster: fit on all but the last `holdout` rows, score on them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
    model.fit(x[:-holdout], y[:-holdout])
    loss = log_loss(y[-holdout:], model.predict_proba(x[-holdout:])[:, 1], labels=[False, True])
    return {"c": c, "log_loss": float(loss), "model": model, "node": ray.get_runtime_context().get_node_id()}


def main() -> None:
    columns = os.environ["FLYWHEEL_FEATURE_COLUMNS"].split(",")
    table = pq.read_table(os.environ["FLYWHEEL_TRAIN_PARQUET"])
    x = np.column_stack([table[c].to_numpy() for c in columns]).astype(np.float32)
    y = table["label"].to_numpy() >= 0.5
    holdout = max(1, len(y) // 5)

    ray.init(address=os.environ.get("RAY_ADDRESS"), logging_level="ERROR", log_to_driver=False)
    try:
        x_ref, y_ref = ray.put(x), ray.put(y)
        results = ray.get([fit.remote(x_ref, y_ref, c, holdout) for c in GRID])
        cluster = ray.cluster_resources()
    finally:
        ray.shutdown()
    best = min(results, key=lambda r: r["log_loss"])
    export_probability(best["model"], len(columns), os.environ["FLYWHEEL_INPUT_NAME"],
                       os.environ["FLYWHEEL_OUTPUT_NAME"], os.environ["FLYWHEEL_MODEL_OUT"])

    params_out = os.environ.get("FLYWHEEL_PARAMS_OUT")
    if params_out:
        with open(params_out, "w") as f:
            json.dump({
                "model": "sklearn LogisticRegression + StandardScaler, fitted on Ray",
                "C": best["c"],
                "grid": {str(r["c"]): round(r["log_loss"], 6) for r in results},
                "ray_cpus": cluster.get("CPU", 0),
                "rows": int(len(y)),
            }, f)


if __name__ == "__main__":
    main()

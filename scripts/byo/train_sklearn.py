"""Bring-your-own training for `trainer run --command` / `command = ...` in the trainer config:
a scikit-learn logistic regression exported with skl2onnx, following the contract in
docs/TRAINER.md (inputs and outputs through FLYWHEEL_* environment variables).

    trainer run --command ".venv/bin/python scripts/byo/train_sklearn.py"

Needs numpy, pyarrow, scikit-learn, skl2onnx and onnx (scripts/setup-test-tools.sh installs them).
"""

import json
import os
import sys

import numpy as np
import pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from skl_export import export_probability  # noqa: E402


def main() -> None:
    columns = os.environ["FLYWHEEL_FEATURE_COLUMNS"].split(",")
    table = pq.read_table(os.environ["FLYWHEEL_TRAIN_PARQUET"])
    x = np.column_stack([table[c].to_numpy() for c in columns]).astype(np.float32)
    y = table["label"].to_numpy() >= 0.5
    c = 1.0
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
    model.fit(x, y)

    export_probability(model, len(columns), os.environ["FLYWHEEL_INPUT_NAME"], os.environ["FLYWHEEL_OUTPUT_NAME"],
                       os.environ["FLYWHEEL_MODEL_OUT"])

    params_out = os.environ.get("FLYWHEEL_PARAMS_OUT")
    if params_out:
        with open(params_out, "w") as f:
            json.dump({"model": "sklearn LogisticRegression + StandardScaler", "C": c, "rows": int(len(y))}, f)


if __name__ == "__main__":
    main()

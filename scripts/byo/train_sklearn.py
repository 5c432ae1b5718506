"""Bring-your-own training for `trainer run --command` / `command = ...` in the trainer config:
a scikit-learn logistic regression exported with skl2onnx, following the contract in
docs/TRAINER.md (inputs and outputs through FLYWHEEL_* environment variables).

    trainer run --command ".venv/bin/python scripts/byo/train_sklearn.py"

Needs numpy, pyarrow, scikit-learn, skl2onnx and onnx (scripts/setup-test-tools.sh installs them).
"""

import json
import os

import numpy as np
import onnx
import pyarrow.parquet as pq
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def main() -> None:
    columns = os.environ["FLYWHEEL_FEATURE_COLUMNS"].split(",")
    table = pq.read_table(os.environ["FLYWHEEL_TRAIN_PARQUET"])
    x = np.column_stack([table[c].to_numpy() for c in columns]).astype(np.float32)
    y = table["label"].to_numpy() >= 0.5
    c = 1.0
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
    model.fit(x, y)

    input_name, output_name = os.environ["FLYWHEEL_INPUT_NAME"], os.environ["FLYWHEEL_OUTPUT_NAME"]
    classifier = model.steps[-1][1]
    graph_model = to_onnx(
        model,
        initial_types=[(input_name, FloatTensorType([None, len(columns)]))],
        options={id(classifier): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # The gateway's clients read one FP32 [N, 1] probability under the champion's output name:
    # keep column 1 of skl2onnx's [N, 2] probabilities and drop its label output.
    graph = graph_model.graph
    probabilities = next(o.name for o in graph.output if o.name != "label")
    for name, values in (("fw_start", [1]), ("fw_end", [2]), ("fw_axis", [1])):
        graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [1], values))
    graph.node.append(helper.make_node("Slice", [probabilities, "fw_start", "fw_end", "fw_axis"], [output_name]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None, 1]))
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, os.environ["FLYWHEEL_MODEL_OUT"])

    params_out = os.environ.get("FLYWHEEL_PARAMS_OUT")
    if params_out:
        with open(params_out, "w") as f:
            json.dump({"model": "sklearn LogisticRegression + StandardScaler", "C": c, "rows": int(len(y))}, f)


if __name__ == "__main__":
    main()

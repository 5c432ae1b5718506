"""Shared by the bring-your-own examples: a fitted scikit-learn classifier exported with
skl2onnx, reduced to what the gateway's clients read (the contract in docs/TRAINER.md): one
FP32 [N, 1] positive-class probability under the champion's output name."""

import onnx
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType


def export_probability(model, features: int, input_name: str, output_name: str, path: str) -> None:
    """Writes `model` (a Pipeline ending in a classifier) to `path` as ONNX."""
    classifier = model.steps[-1][1]
    graph_model = to_onnx(
        model,
        initial_types=[(input_name, FloatTensorType([None, features]))],
        options={id(classifier): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # Keep column 1 of skl2onnx's [N, 2] probabilities and drop its label output.
    graph = graph_model.graph
    probabilities = next(o.name for o in graph.output if o.name != "label")
    for name, values in (("fw_start", [1]), ("fw_end", [2]), ("fw_axis", [1])):
        graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [1], values))
    graph.node.append(helper.make_node("Slice", [probabilities, "fw_start", "fw_end", "fw_axis"], [output_name]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None, 1]))
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, path)

"""Triton Python-backend model for `bench hotpath`: the same ONNX file the gateway serves, run by
onnxruntime (one thread, as the gateway's session) on the batch Triton's dynamic batcher formed,
answered per request."""

import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        results = self.session.run(None, {self.input: np.concatenate(arrays)})
        responses, start = [], 0
        for array in arrays:
            rows = array.shape[0]
            tensors = [pb_utils.Tensor(name, out[start : start + rows]) for name, out in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += rows
        return responses

"""Triton Python-backend preprocessing: raw uint8 images -> the model's float32 input.

Model ``<name>_preprocess``: input ``RAW`` UINT8 [K, *raw_shape] -> output ``INPUT`` FP32 [K, *input_shape],
computed by ``nercc.preprocessing.preprocess`` (the same function used at export and in benchmarks), with
the model's ``nercc.json`` read at load time. First step of the ``<name>_encode`` ensemble.

Config parameters: ``nercc_model_dir`` (folder with nercc.json, relative to this model's folder or absolute),
``max_request_bytes`` (limit on the raw input of one request). ``nercc`` is imported as installed in the
stub's Python environment (no sys.path edits).
Every invalid request gets its own TritonError naming the problem; the model keeps serving.
"""

import importlib.util
import json

import numpy as np
import triton_python_backend_utils as pb_utils


def _require_nercc():
    """nercc as installed in this stub's Python: the launcher's environment, or EXECUTION_ENV_PATH (containers)."""
    if importlib.util.find_spec("nercc") is None:
        raise ImportError("nercc is not installed in the Python environment of this Triton stub: install it there "
                          "(pip install nercc) or point the model's EXECUTION_ENV_PATH at an environment that has it")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        _require_nercc()
        from nercc.models import load_model_info
        from nercc.preprocessing import preprocess
        from nercc.serving.backend_utils import config_param, nercc_model_dir, triton_error

        self._preprocess, self._error = preprocess, triton_error
        model_dir = nercc_model_dir(config, args)
        self.info = load_model_info(model_dir.name, model_dir.parent)
        self.max_request_bytes = int(config_param(config, "max_request_bytes", str(256 * 2**20)))
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def _run(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            raise ValueError(f"input {self.input_name!r} is missing")
        raw = tensor.as_numpy()
        if raw.nbytes > self.max_request_bytes:
            raise ValueError(f"input {self.input_name!r} is {raw.nbytes} bytes, over the limit "
                             f"max_request_bytes = {self.max_request_bytes}")
        if raw.ndim == 0 or raw.shape[0] < 1:
            raise ValueError(f"input {self.input_name!r} is empty: shape {list(raw.shape)}")
        x = self._preprocess(self.info, raw)
        return pb_utils.Tensor(self.output_name, np.ascontiguousarray(x, dtype=np.float32))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=[self._run(request)]))
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=self._error(str(exc))))
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"preprocess failed: {type(exc).__name__}: {exc}")))
        return responses

    def finalize(self):
        self.info = None

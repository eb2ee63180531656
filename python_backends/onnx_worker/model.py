"""Triton Python-backend worker: runs one exported ONNX model with onnxruntime, optional straggler delay.

Model ``<name>``: input ``input`` FP32 [b, *input_shape] -> output ``probs`` FP32 [b, n_classes]
(names from config.pbtxt). Triton's PyPI build has no ONNX Runtime backend, so this model calls
onnxruntime itself; in an NGC container the same ONNX file can run on the native backend instead
(``nercc serve --write-repository DIR --native-onnxruntime``).

Config parameters (all strings, all optional):
    onnx_path         ONNX file, relative to this model's folder; default ``<version>/model.onnx``
    intra_op_threads  onnxruntime intra-op threads (default 1: many workers share few cores)
    straggler         straggler profile (``nercc.serving.stragglers``), default ``none``
    seed, worker_index  seed the delay stream: same cluster seed, different stream per worker
    device            onnxruntime device: auto (CUDA when this onnxruntime has it) | cpu | cuda; default auto
    fault             wrong answers on purpose, for chaos tests (``nercc.serving.faults``), default ``none``
    onnx_sha256       the model identity (nercc.json): the ONNX file must hash to it, else the model fails to
                      load; clients compare it with the master's and never decode from another model
    output_kind       probabilities | logits | regression (nercc.json; read by clients, not here)

The server's environment overrides the per-worker ones (``NERCC_WORKER_INDEX``, ``NERCC_STRAGGLER``,
``NERCC_SEED``, ``NERCC_DEVICE``, ``NERCC_FAULT``), so one repository serves every worker (``nercc worker --index i``).
"""

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

#: How often a delayed request checks whether its client gave up (one IPC round trip per check).
CANCEL_POLL_S = 0.01


def _require_nercc():
    """nercc as installed in this stub's Python: the launcher's environment, or EXECUTION_ENV_PATH (containers)."""
    if importlib.util.find_spec("nercc") is None:
        raise ImportError("nercc is not installed in the Python environment of this Triton stub: install it there "
                          "(pip install nercc) or point the model's EXECUTION_ENV_PATH at an environment that has it")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        _require_nercc()
        import onnxruntime as ort

        from nercc.serving.backend_utils import (
            config_param,
            onnxruntime_providers,
            triton_error,
            worker_setting,
        )
        from nercc.serving.faults import FaultInjector
        from nercc.serving.stragglers import StragglerSampler

        self._error = triton_error

        model_folder = Path(args["model_repository"])
        onnx_path = Path(config_param(config, "onnx_path") or Path(args["model_version"]) / "model.onnx")
        if not onnx_path.is_absolute():
            onnx_path = model_folder / onnx_path
        threads = int(config_param(config, "intra_op_threads", "1"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        device = worker_setting(config, "device", "auto")
        providers = onnxruntime_providers(device, ort.get_available_providers())
        expected = config_param(config, "onnx_sha256")
        if expected:
            from nercc.models import file_sha256

            actual = file_sha256(onnx_path)
            if actual != expected:
                raise ValueError(f"{onnx_path} has sha256 {actual}, but this model's config (its nercc.json) says "
                                 f"{expected}: the metadata does not describe this file (re-export the model)")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)

        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.onnx_input = self.session.get_inputs()[0].name
        self.onnx_output = self.session.get_outputs()[0].name
        self.straggler = StragglerSampler(
            worker_setting(config, "straggler", "none"),
            seed=int(worker_setting(config, "seed", "0")),
            worker_index=int(worker_setting(config, "worker_index", "0")),
        )
        self.inject = self.straggler.profile.kind != "none"
        self.fault = FaultInjector(worker_setting(config, "fault", "none"),
                                   worker_index=int(worker_setting(config, "worker_index", "0")))
        self.logger = pb_utils.Logger
        self.logger.log_info(
            f"onnx worker {args['model_name']}: {onnx_path.name}, {threads} intra-op thread(s), "
            f"providers={','.join(self.session.get_providers())}, "
            f"straggler={self.straggler.profile}, seed={self.straggler.seed}, worker={self.straggler.worker_index}"
            + (f", FAULT INJECTED: {self.fault.fault}" if self.fault.active else "")
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                x = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
                started = time.perf_counter()
                probs = self.session.run([self.onnx_output], {self.onnx_input: x})[0]
                compute_ms = 1e3 * (time.perf_counter() - started)
                if self.inject:
                    # A straggler is a slow machine: the delay holds this instance, as slow hardware would,
                    # but a request the client cancelled (deadline passed) stops holding it.
                    delay_ms = self.straggler.next_delay_ms(compute_ms)
                    if delay_ms > 0 and self._sleep_unless_cancelled(request, delay_ms / 1e3):
                        responses.append(pb_utils.InferenceResponse(
                            output_tensors=[], error=self._error("cancelled by the client while delayed", "CANCELLED")))
                        continue
                if self.fault.active:
                    probs = self.fault.apply(probs)
                out = pb_utils.Tensor(self.output_name, np.ascontiguousarray(probs, dtype=np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except Exception as exc:  # one bad request must not take the worker down
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=self._error(f"worker failed: {exc}")))
        return responses

    def _sleep_unless_cancelled(self, request, delay_s):
        """Sleep delay_s; True as soon as the request is cancelled (polled every CANCEL_POLL_S)."""
        end = time.perf_counter() + delay_s
        can_check = hasattr(request, "is_cancelled")
        while True:
            left = end - time.perf_counter()
            if left <= 0:
                return False
            time.sleep(min(left, CANCEL_POLL_S))
            if can_check and request.is_cancelled():
                return True

    def finalize(self):
        self.session = None

"""Triton Python-backend coded endpoint: K inputs -> K predictions, encode, fan-out, wait and decode on the master.

Model ``<name>_coded``: input ``RAW`` UINT8 [K, *raw_shape] (the tensor of ``<name>_encode``); model
``<name>_coded_input`` (the same file configured with ``INPUT`` FP32 [K, *input_shape], the step after
``<name>_preprocess`` in the ``<name>_coded_pipeline`` ensemble). Outputs ``PREDICTIONS`` FP32 [K, D],
``EXACT`` BOOL [K], ``ANSWERS_USED`` INT32 [1], ``ARRIVED`` INT32 [|F|], ``LATE`` BOOL [1].

The work is :class:`nercc.serving.coded_endpoint.CodedEndpoint`: the coded client (``nercc.client``) running
inside this stub with local encoding, its worker requests on ``tritonclient.grpc.aio`` in the stub's event
loop (``async def execute``: Triton's Python backend runs the coroutine on its own asyncio loop). Request
parameters ``scheme``, ``deadline_ms``, ``policy``; config parameters ``model_name``, ``nercc_model_dir``,
``worker_urls`` / ``urls_file`` (or ``$NERCC_WORKER_URLS``), ``scheme``, ``deadline_ms``, ``policy``,
``hard_timeout_ms``, ``min_answers``, ``max_request_bytes``. One model instance serves one request list at a
time: ``instance_group`` count sets how many batches the master serves at once.

Every invalid request gets its own TritonError naming the problem (INVALID_ARG; too few worker answers:
UNAVAILABLE); the model keeps serving the others.
"""

import asyncio
import importlib.util
import json
from pathlib import Path

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
        from nercc.serving import coded_endpoint
        from nercc.serving.backend_utils import config_param, nercc_model_dir, triton_error

        self._module, self._error = coded_endpoint, triton_error
        model_dir = nercc_model_dir(config, args)
        model_name = config_param(config, "model_name") or model_dir.name
        self.max_request_bytes = int(config_param(config, "max_request_bytes", str(256 * 2**20)))
        self.input_name = config["input"][0]["name"]
        self.output_names = [o["name"] for o in config["output"]]
        folder = Path(args["model_repository"])
        self.endpoint = coded_endpoint.endpoint_from_config(config, model_name, model_dir, folder)
        pb_utils.Logger.log_info(
            f"coded endpoint {args['model_name']}: model {model_name}, {len(self.endpoint.worker_urls)} worker(s) "
            f"configured, scheme {self.endpoint.scheme}, policy {self.endpoint.policy}, "
            f"deadline {self.endpoint.deadline_ms:g} ms")

    async def _one(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            raise self._module.RequestError(f"input {self.input_name!r} is missing")
        batch = tensor.as_numpy()
        if batch.nbytes > self.max_request_bytes:
            raise self._module.RequestError(f"input {self.input_name!r} is {batch.nbytes} bytes, over the limit "
                                            f"max_request_bytes = {self.max_request_bytes}")
        raw = request.parameters()
        params = json.loads(raw) if raw else {}
        outputs = await self.endpoint.infer(batch, params)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, outputs[n]) for n in self.output_names])

    async def _respond(self, request):
        from nercc.client.core import NotEnoughAnswersError

        try:
            return await self._one(request)
        except ValueError as exc:  # RequestError, and a bad batch the client refused
            return pb_utils.InferenceResponse(output_tensors=[], error=self._error(str(exc)))
        except (NotEnoughAnswersError, self._module.NoWorkersError) as exc:
            return pb_utils.InferenceResponse(output_tensors=[], error=self._error(str(exc), "UNAVAILABLE"))
        except Exception as exc:  # a bug must not kill the server for everyone: report it on this request
            return pb_utils.InferenceResponse(
                output_tensors=[], error=pb_utils.TritonError(f"coded endpoint failed: {type(exc).__name__}: {exc}"))

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._respond(r) for r in requests)))

    def finalize(self):
        # the channels belong to the stub's event loop, which ends with the stub process
        self.endpoint = None

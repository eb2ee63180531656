"""Triton Python-backend encoder: K inputs -> N coded inputs with NeRCC or BACC (``nercc.coding``).

Model ``<name>_encoder``: input ``INPUT`` FP32 [K, *input_shape] -> output ``CODED`` FP32 [N, *input_shape],
``coded = E @ x`` along the first axis with E the scheme's (N, K) encoding matrix. For a *systematic* scheme
(``nercc-sys``, ``bacc-sys``: ``SchemeInfo.systematic``) ``CODED`` is FP32 [N - K, *input_shape]: only the
parity rows (``CodingScheme.encode_parity``), row j for worker ``parity_workers[j]``; the K systematic workers
get the inputs themselves, which the client sends without waiting for the master.
Model ``<name>_encode`` (the same file, configured with a UINT8 input): input ``RAW`` UINT8 [K, *raw_shape]
-> ``CODED``: preprocessing (``nercc.preprocessing.preprocess``, the model's ``nercc.json``) and encoding in
one Python-stub hop, where an ensemble of two Python models would pay two.

Request parameters (tritonclient ``parameters={...}``, the same for ``<name>_encode`` and ``<name>_encoder``):
    scheme        a coded scheme of ``nercc.coding.CODED_SCHEMES``: "nercc" (default), "bacc", "nercc-sys",
                  "bacc-sys"
    n_workers     N, int, required
    lam_enc       float >= 0, NeRCC only; default from the model's tuning profile (nercc.coding.profile_lams)
    n_stragglers  int >= 0, optional: picks the profile entry for the expected straggler count

Config parameters: ``nercc_model_dir`` (the model's folder with tuning.json, relative to this model's
folder or absolute), ``max_request_bytes`` (limit on the input and on the coded output of one request),
``matrix_cache_bytes`` (bound of the cache of coding schemes and their matrices). ``nercc`` is imported as
installed in the stub's Python environment (no sys.path edits); the encoding is the core's
(``CodingScheme.encode``: float32 matrices with negligible entries flushed).

Every invalid request gets its own TritonError naming the problem; the model keeps serving the others.
"""

import importlib.util
import json
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


def _require_nercc():
    """nercc as installed in this stub's Python: the launcher's environment, or EXECUTION_ENV_PATH (containers)."""
    if importlib.util.find_spec("nercc") is None:
        raise ImportError("nercc is not installed in the Python environment of this Triton stub: install it there "
                          "(pip install nercc) or point the model's EXECUTION_ENV_PATH at an environment that has it")


class RequestError(ValueError):
    """A problem with one request: its message goes back to the client."""


def _int_param(params, key, minimum, required=False):
    if key not in params:
        if required:
            raise RequestError(f"request parameter {key!r} is required (int >= {minimum})")
        return None
    value = params[key]
    # tritonclient sends ints as int64_param; bool is an int in Python but never a count
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"request parameter {key!r} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise RequestError(f"request parameter {key!r} must be >= {minimum}, got {value}")
    return value


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        _require_nercc()
        from nercc import coding
        from nercc.profiles import load_profile
        from nercc.serving import limits
        from nercc.serving.backend_utils import config_param, nercc_model_dir, triton_error

        self._coding, self._load_profile, self._error, self._limits = coding, load_profile, triton_error, limits
        self.model_dir = nercc_model_dir(config, args)
        self.max_request_bytes = int(config_param(config, "max_request_bytes", str(256 * 2**20)))
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        # with max_batch_size > 0 (Triton refuses K beyond it) the first axis is implicit in dims
        dims = config["output"][0]["dims"]
        self.item_shape = tuple(int(d) for d in (dims if int(config.get("max_batch_size", 0)) > 0 else dims[1:]))
        self._raw_info = None  # the model's nercc.json info when this instance preprocesses raw input first
        if config["input"][0]["data_type"] == "TYPE_UINT8":
            from nercc.models import load_model_info
            from nercc.preprocessing import preprocess

            self._raw_info = load_model_info(self.model_dir.name, self.model_dir.parent)
            self._preprocess = preprocess
        # (scheme, K, N, lam_enc) -> coding scheme with its encoding matrix, LRU bounded in bytes (the coding
        # core's cache): a new lam_enc per request at K = N = 4096 is 64 MiB each (an entry count let the master
        # grow ~67 MiB per request)
        cache_bytes = int(config_param(config, "matrix_cache_bytes", str(limits.DEFAULT_MATRIX_CACHE_BYTES)))
        self._coders = coding.ByteBoundedLRU(cache_bytes)
        self._lock = threading.Lock()
        self._profile = None  # the model's tuning profile, read again only when tuning.json changes
        self._profile_stamp = None
        pb_utils.Logger.log_info(
            f"encoder {args['model_name']}: item shape {self.item_shape}, profile dir {self.model_dir}, "
            f"max_request_bytes={self.max_request_bytes}, matrix cache {cache_bytes} bytes"
        )

    # -- one request -------------------------------------------------------------------------------
    def _parameters(self, request, n_inputs):
        raw = request.parameters()
        params = json.loads(raw) if raw else {}
        unknown = sorted(set(params) - {"scheme", "n_workers", "lam_enc", "lam_dec", "n_stragglers"})
        if unknown:
            raise RequestError(f"unknown request parameter(s) {unknown}; allowed: scheme, n_workers, lam_enc, "
                               "n_stragglers")
        scheme = params.get("scheme", self._coding.DEFAULT_SCHEME)
        coded = self._coding.CODED_SCHEMES
        if not isinstance(scheme, str) or scheme.lower() not in coded:
            raise RequestError(f"request parameter 'scheme' must be one of {list(coded)}, got {scheme!r}")
        info = self._coding.scheme_info(scheme, coded_only=True)
        n_workers = _int_param(params, "n_workers", minimum=2, required=True)
        if n_workers > self._limits.MAX_WORKERS:
            raise RequestError(f"request parameter 'n_workers' must be <= {self._limits.MAX_WORKERS}, got {n_workers}")
        if n_workers < n_inputs:
            raise RequestError(f"n_workers = {n_workers} is smaller than the number of inputs K = {n_inputs} "
                               "(N >= K is needed)")
        n_stragglers = _int_param(params, "n_stragglers", minimum=0)
        if n_stragglers is not None and n_stragglers >= n_workers:
            raise RequestError(f"request parameter 'n_stragglers' must be < n_workers = {n_workers}, "
                               f"got {n_stragglers}")
        lam_enc = params.get("lam_enc")
        if lam_enc is not None:
            if isinstance(lam_enc, bool) or not isinstance(lam_enc, (int, float)):
                raise RequestError(f"request parameter 'lam_enc' must be a float, got {type(lam_enc).__name__} "
                                   f"{lam_enc!r}")
            lam_enc = float(lam_enc)
            if not np.isfinite(lam_enc) or lam_enc < 0:
                raise RequestError(f"request parameter 'lam_enc' must be finite and >= 0, got {lam_enc}")
        if not info.smoothing:
            lam_enc = 0.0  # Berrut has no smoothing parameter
        elif lam_enc is None:
            lam_enc = self._coding.profile_lams(self._tuning_profile(), n_inputs, n_workers, n_stragglers,
                                               scheme=info.name)[0]
        return info.name, n_workers, lam_enc

    def _tuning_profile(self):
        """The model's tuning profile, read again only when tuning.json changes (`nercc tune` while serving)."""
        try:
            stamp = (self.model_dir / "tuning.json").stat().st_mtime_ns
        except OSError:
            stamp = None
        with self._lock:
            if self._profile is None or stamp != self._profile_stamp:
                self._profile, self._profile_stamp = self._load_profile(self.model_dir), stamp
            return self._profile

    def _coder(self, scheme, n_inputs, n_workers, lam_enc):
        """The coding scheme for this setting, its encoding matrix built (no decoding cache: the master encodes)."""
        def build():
            coder = self._coding.make_scheme(scheme, n_inputs, n_workers, lam_enc=lam_enc, cache_size=0)
            coder.encoding_matrix()
            return coder

        return self._coders.get_or_build((scheme, n_inputs, n_workers, lam_enc), build)

    def _preprocessed(self, request, raw):
        """RAW uint8 [K, *raw_shape] -> float32 [K, *input_shape] (``<name>_encode`` only).

        Every limit is checked first, counting the float32 growth: K <= N and the preprocessed and coded
        sizes (a 200 MiB raw request once took the master from 148 MiB to 4 GiB before being refused).
        """
        if raw.ndim == 0 or raw.shape[0] < 1:
            raise RequestError(f"input {self.input_name!r} is empty: shape {list(raw.shape)}")
        if raw.nbytes > self.max_request_bytes:
            raise RequestError(f"input {self.input_name!r} is {raw.nbytes} bytes, over the limit "
                               f"max_request_bytes = {self.max_request_bytes}")
        _, n_workers, _ = self._parameters(request, raw.shape[0])
        self._limits.check_encode_request(raw.shape[0], n_workers, self.item_shape, self.max_request_bytes,
                                          raw_bytes=raw.nbytes)
        return self._preprocess(self._raw_info, raw)

    def _encode(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            raise RequestError(f"input {self.input_name!r} is missing")
        x = tensor.as_numpy()
        if self._raw_info is not None:
            x = self._preprocessed(request, x)
        if x.dtype != np.float32:
            raise RequestError(f"input {self.input_name!r} must be FP32, got {x.dtype}")
        if x.ndim != 1 + len(self.item_shape) or tuple(x.shape[1:]) != self.item_shape:
            raise RequestError(f"input {self.input_name!r} must have shape [K, {', '.join(map(str, self.item_shape))}]"
                               f", got {list(x.shape)}")
        if x.nbytes > self.max_request_bytes:
            raise RequestError(f"input {self.input_name!r} is {x.nbytes} bytes, over the limit "
                               f"max_request_bytes = {self.max_request_bytes}")
        n_inputs = x.shape[0]
        if n_inputs < 2:
            raise RequestError(f"input {self.input_name!r} needs K >= 2 inputs along the first axis, got K = {n_inputs}")
        if not np.isfinite(x).all():
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise RequestError(f"input {self.input_name!r} has {bad} NaN or infinite value(s)")
        scheme, n_workers, lam_enc = self._parameters(request, n_inputs)
        coded_bytes = n_workers * (x.nbytes // n_inputs)
        if coded_bytes > self.max_request_bytes:
            raise RequestError(f"coded output would be {coded_bytes} bytes (N = {n_workers}), over the limit "
                               f"max_request_bytes = {self.max_request_bytes}")
        coder = self._coder(scheme, n_inputs, n_workers, lam_enc)
        # systematic: the parity rows only (the inputs themselves go to their own workers from the client)
        coded = coder.encode_parity(x) if coder.systematic else coder.encode(x)
        # finite inputs near the float32 maximum overflow: an error, never inf/NaN with status OK
        self._limits.check_finite_output(self.output_name, coded)
        return pb_utils.Tensor(self.output_name, np.ascontiguousarray(coded, dtype=np.float32))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                out = self._encode(request)
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except (RequestError, ValueError) as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=self._error(str(exc))))
            except Exception as exc:  # a bug must not kill the server for everyone: report it on this request
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"encoder failed: {type(exc).__name__}: {exc}")))
        return responses

    def finalize(self):
        self._coders.clear()

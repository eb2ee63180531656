"""What every offline experiment shares: its inputs, f in batches, trials of K inputs, and their coded outputs.

The coding itself (encode, decode, the MSE of a scheme on f, straggler sets, tuning) is :mod:`nercc.coding`;
this module only feeds it real data and a real model, in the batch sizes an inference session likes.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from nercc.coding import CodingScheme, coded_outputs, evaluate, random_straggler_sets
from nercc.paths import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "bench" / "results"

Model = Callable[[np.ndarray], np.ndarray]


#: f batch size (images per onnxruntime call) by input size: bigger inputs, smaller batches.
def default_batch_size(input_dim: int) -> int:
    if input_dim <= 4096:
        return 2000
    if input_dim <= 50_000:
        return 256
    return 16


@dataclass
class Inputs:
    """Preprocessed model inputs with their labels and where they came from."""

    x: np.ndarray  # float32 (n, *input_shape)
    labels: np.ndarray  # int64 (n,)
    split: str  # e.g. "test", "train", "test[even]"
    indices: np.ndarray  # indices into the data set split


def split_policy(dataset: str) -> Tuple[Tuple[str, int | None], Tuple[str, int | None]]:
    """Where evaluation and tuning inputs come from: ((split, parity), (split, parity)).

    MNIST and CIFAR-10: evaluate on the test split, tune on the training split. The ImageNet sample set has
    one split of 20 images, and a user's model (``nercc add-model``) its calibration file: evaluate on the
    even-indexed inputs, tune on the odd-indexed ones (disjoint).
    ``parity`` None means the whole split.
    """
    if dataset in ("imagenet", "imagenet-samples", "calibration"):
        return ("test", 0), ("test", 1)
    return ("test", None), ("train", None)


def load_inputs(info, purpose: str, n: int, seed: int) -> Inputs:
    """``n`` preprocessed inputs for ``purpose`` "eval" or "tune" (disjoint, see :func:`split_policy`).

    Inputs are a seeded random sample without replacement; when the pool holds fewer than ``n`` images
    (ImageNet samples) the whole pool is returned.
    """
    from nercc.data import load_model_data
    from nercc.preprocessing import preprocess

    if purpose not in ("eval", "tune"):
        raise ValueError(f"purpose must be 'eval' or 'tune', got {purpose!r}")
    if n < 1:
        raise ValueError(f"number of inputs must be >= 1, got {n}")
    (split, parity) = split_policy(info.dataset)[0 if purpose == "eval" else 1]
    raw, labels = load_model_data(info, split=split)
    pool = np.arange(len(raw))
    if parity is not None:
        pool = pool[pool % 2 == parity]
        split = f"{split}[{'even' if parity == 0 else 'odd'}]"
    rng = np.random.default_rng([seed, 0 if purpose == "eval" else 1])
    chosen = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
    x = np.concatenate([preprocess(info, raw[chosen[i : i + 512]]) for i in range(0, len(chosen), 512)])
    return Inputs(x=x.astype(np.float32, copy=False), labels=np.asarray(labels)[chosen], split=split, indices=chosen)


def trial_batches(n_pool: int, n_inputs: int, n_trials: int, seed: int) -> np.ndarray:
    """(T, K) indices into a pool: disjoint across trials when the pool is large enough, else K distinct per trial."""
    if n_inputs > n_pool:
        raise ValueError(f"K = {n_inputs} inputs per trial but only {n_pool} evaluation inputs exist")
    rng = np.random.default_rng([seed, 2])
    if n_inputs * n_trials <= n_pool:
        return rng.permutation(n_pool)[: n_inputs * n_trials].reshape(n_trials, n_inputs)
    return np.stack([rng.choice(n_pool, size=n_inputs, replace=False) for _ in range(n_trials)])


def straggler_sets(n_workers: int, n_stragglers: int, n_trials: int, seed: int) -> np.ndarray:
    """(T, N - S) ascending arrived-worker indices, one uniformly random set per trial (seeded per S)."""
    if not 0 <= n_stragglers <= n_workers - 2:
        raise ValueError(f"stragglers must be in [0, N - 2] = [0, {n_workers - 2}], got {n_stragglers}")
    return np.stack(random_straggler_sets(n_workers, n_stragglers, n_trials, seed=[seed, 3, n_workers, n_stragglers]))


class BatchedModel:
    """f applied in batches of ``batch_size`` with a shared progress bar and a count of calls and images."""

    def __init__(self, f: Model, batch_size: int, progress: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.f, self.batch_size, self.progress = f, int(batch_size), progress
        self.calls = 0
        self.images = 0
        self.seconds = 0.0

    def __call__(self, x: np.ndarray, desc: str = "f") -> np.ndarray:
        from nercc.progress import progress_bar

        out = []
        with progress_bar(total=len(x), desc=desc, unit="img", disable=not self.progress or len(x) < 5000,
                  leave=False, file=sys.stderr) as bar:
            for i in range(0, len(x), self.batch_size):
                chunk = np.ascontiguousarray(x[i : i + self.batch_size], dtype=np.float32)
                start = time.perf_counter()
                out.append(np.asarray(self.f(chunk), dtype=np.float64))
                self.seconds += time.perf_counter() - start
                self.calls += 1
                self.images += len(chunk)
                bar.update(len(chunk))
        return np.concatenate(out)


class Trials:
    """T trials of K inputs each, f on the uncoded inputs, and f on each encoding (computed once per encoding).

    ``x_trials``: (T, K, *input_shape). Coding runs in float64 (f gets float32 from :class:`BatchedModel`).
    """

    #: coded inputs handed to f per call of :func:`nercc.coding.coded_outputs`: about this many floats
    CODED_FLOATS_PER_CALL = 16_000_000

    def __init__(self, model: BatchedModel, x_trials: np.ndarray, labels: np.ndarray | None = None):
        self.model = model
        self.x_trials = np.asarray(x_trials, dtype=np.float64)
        self.n_trials, self.n_inputs = x_trials.shape[:2]
        self.labels = labels
        self.batches: np.ndarray | None = None  # (T, K) indices into the input pool, when drawn by draw()
        flat = x_trials.reshape(self.n_trials * self.n_inputs, *x_trials.shape[2:])
        self.base = model(flat, desc="f(x)").reshape(self.n_trials, self.n_inputs, -1)
        self.base_top1 = self.base.argmax(-1)
        self._outputs: Dict[tuple, np.ndarray] = {}

    @classmethod
    def draw(cls, f, inputs: Inputs, n_inputs: int, n_trials: int, seed: int, batch_size: int,
             progress: bool = False) -> Trials:
        """T trials of K inputs drawn from ``inputs`` (:func:`trial_batches`), labels kept, f run in batches."""
        batches = trial_batches(len(inputs.x), n_inputs, n_trials, seed)
        trials = cls(BatchedModel(f, batch_size, progress), inputs.x[batches], inputs.labels[batches])
        trials.batches = batches
        return trials

    def worker_outputs(self, scheme: CodingScheme) -> np.ndarray:
        """f on every coded input of every trial, (T, N, C); computed once per encoding matrix."""
        key = encoder_key(scheme)
        if key not in self._outputs:
            dim = int(np.prod(self.x_trials.shape[2:]))
            per_call = max(1, min(self.n_trials, self.CODED_FLOATS_PER_CALL // max(1, scheme.n_workers * dim)))
            self._outputs[key] = coded_outputs(scheme, self.model, self.x_trials, batches_per_call=per_call)
        return self._outputs[key]

    def score(self, scheme: CodingScheme, arrived: np.ndarray) -> Dict[str, np.ndarray]:
        """Per-trial MSE (:func:`nercc.coding.evaluate`, trial t decoded from set t), accuracy (vs labels)
        and top-1 agreement (vs f) of ``scheme``; ``arrived``: (T, |F|) ascending worker indices."""
        outputs = self.worker_outputs(scheme)
        mse = evaluate(scheme, None, self.x_trials, arrived, f_x=self.base, outputs=outputs, paired=True)
        acc = np.full(self.n_trials, np.nan)
        agree = np.empty(self.n_trials)
        for t in range(self.n_trials):
            top1 = scheme.decode(outputs[t, arrived[t]], arrived[t]).argmax(-1)
            agree[t] = np.mean(top1 == self.base_top1[t])
            if self.labels is not None:
                acc[t] = np.mean(top1 == self.labels[t])
        return {"mse": mse, "acc": acc, "agree": agree}


def encoder_key(scheme: CodingScheme) -> tuple:
    """Identity of an encoding matrix: the scheme, K, N, (NeRCC) lam_enc and (systematic) the geometry; lam_dec
    does not change it."""
    return (scheme.name, scheme.n_inputs, scheme.n_workers, float(getattr(scheme, "lam_enc", 0.0)),
            getattr(scheme, "geometry", None))


def command_line(argv: Sequence[str]) -> str:
    """The command as a user would type it: ``nercc <args>``."""
    return "nercc " + " ".join(shlex.quote(str(a)) for a in argv)


def parse_int_list(text: str) -> List[int]:
    """"0,10,20" or "0:60:10" (start:stop:step, stop included) -> list of ints."""
    text = text.strip()
    try:
        if ":" in text:
            start, stop, step = (int(v) for v in text.split(":"))
            if step <= 0:
                raise ValueError
            return list(range(start, stop + 1, step))
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected integers like '0,10,20' or '0:60:10', got {text!r}") from None


def exit_code_of(prog: str, run: Callable[[], int]) -> int:
    """``run()``'s exit code; bad settings or a model not exported (ValueError, FileNotFoundError) print one
    clear line naming the problem and give 2, without a traceback."""
    try:
        return run()
    except (ValueError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2

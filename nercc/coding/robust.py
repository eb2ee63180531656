r"""Byzantine-robust decoding: find and drop worker answers that are finite but wrong, then decode the rest.

A faulty GPU, a bad model version or an adversary can answer with finite values that are simply wrong. The
decoder is a regression through (beta_i, y_i), so one wrong y_j moves every decoded output. The answers of
honest workers lie on a smooth curve (f composed with the encoder), so each one is well predicted by the
others: the **leave-one-out residual** of worker i, y_i minus the decoding regression fitted *without* i and
evaluated at beta_i, is small for honest workers and large for a wrong one. For a smoothing spline with
lam > 0 it has the closed form r_i / (1 - H_ii) (H the hat matrix); we build it by refitting without each
worker, which is exact for every scheme here (lam = 0 interpolation, where H = I, and Berrut included).

Write L for the |F| x |F| leave-one-out residual operator: R = L y (row i = y_i minus the prediction of y_i
from the others). Then, up to ``max_faulty`` times:

1. **locate**: a wrong answer at j leaves the pattern R ~ L[:, j] e_j^T (it spoils its neighbours'
   predictions too, an end worker's by more than its own), so the suspect is the column that explains most
   of R: j = argmax ||L[:, j]^T R|| / ||L[:, j]||, with its least-squares error e_j = L[:, j]^T R / ||L[:, j]||^2;
2. **decide**: j is wrong when its error is larger than ``threshold`` times the spread of the other answers
   (root mean square distance from their mean, the farthest quarter set aside so that further wrong
   answers do not inflate it), or than ``threshold`` times the typical answer size (median norm) when
   that is larger: a batch of near-identical answers has almost no spread, yet an honest answer between
   them may differ by a whole output. Honest errors cannot be much larger than the spread of the
   answers themselves: on LeNet5/MNIST coded outputs (N = 12 and 20) the honest ratio stayed below 2.2 in
   300 batches, while an answer off by unit Gaussian noise scored 2.8-5 and a 1e6-scale answer 1e6;
3. drop j, rebuild L for the remaining workers and repeat.

What it cannot do: at small N the honest answers of a coded batch are rough (each coded input is a mix of
inputs, and softmax outputs jump), so an in-range wrong answer (another valid probability vector) leaves
residuals no larger than honest ones and goes unnoticed; its damage is bounded by the output range. Range
checks (probabilities in [0, 1]) belong to the caller, who knows the model's outputs.

ApproxIFER (Soleymani et al., AAAI 2022) locates Byzantine workers of Berrut-coded inference with an
error-locator polynomial and needs 2A extra answers for A adversaries; this detector plays that role for
both schemes and never drops below ``n_inputs`` answers. Honest batches pay one (|F| x |F|) @ (|F| x D)
product and a few norms (L is cached per arrived set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from nercc.coding._validation import check_count, check_data, check_finite, check_lam

__all__ = ["RobustDecodeResult", "robust_decode", "detect_outliers", "outlier_score", "DEFAULT_THRESHOLD"]

#: A located error larger than this many times the spread of the other answers is a wrong answer.
DEFAULT_THRESHOLD = 2.0


@dataclass(frozen=True)
class RobustDecodeResult:
    """Decoded outputs and which answers were used and which were dropped as wrong."""

    predictions: np.ndarray  # (K, ...)
    used: Tuple[int, ...]  # worker indices whose answers were decoded
    dropped: Tuple[int, ...]  # worker indices judged wrong, in the order they were found


def _locate(L: np.ndarray, R: np.ndarray):
    """(index into the current list, its least-squares error vector) of the column best explaining R."""
    col_energy = np.einsum("ij,ij->j", L, L)
    fit = L.T @ R  # (|F|, D): projection of R onto each column
    explained = np.einsum("ij,ij->i", fit, fit) / np.maximum(col_energy, 1e-300)
    j = int(np.argmax(explained))
    return j, fit[j] / max(col_energy[j], 1e-300)


def _trimmed_spread(answers: np.ndarray) -> float:
    """RMS distance of the answers from their mean, after setting aside the quarter farthest from the
    coordinate-wise median (so that further wrong answers do not inflate the yardstick)."""
    distance = np.linalg.norm(answers - np.median(answers, axis=0), axis=1)
    keep = np.argsort(distance)[: max(2, len(answers) - len(answers) // 4)]
    core = answers[keep]
    return float(np.sqrt(np.mean(np.sum((core - core.mean(axis=0)) ** 2, axis=1))))


def _score(L: np.ndarray, answers: np.ndarray):
    """(index of the most suspect answer, its located error over the yardstick of the others): step 1-2."""
    j, error = _locate(L, L @ answers)
    rest = np.delete(answers, j, axis=0)
    # nearly identical honest answers (a batch of one class) have a tiny spread while an honest
    # coded answer between them may still differ by a whole output: the typical answer size is a floor
    scale = max(_trimmed_spread(rest), float(np.median(np.linalg.norm(rest, axis=1))), 1e-300)
    return j, float(np.linalg.norm(error)) / scale


def outlier_score(scheme, y, arrived) -> Tuple[int, float]:
    """(worker, score): the answer that best explains the leave-one-out residuals and the statistic that
    :func:`detect_outliers` compares with ``threshold`` (its located error over the spread, or typical size,
    of the other answers). For measuring the detector: how high honest batches score against attacked ones.
    """
    from nercc.coding._validation import check_arrived

    key = check_arrived(arrived, scheme.n_workers)
    y = check_data("y", y, len(key), "one per arrived worker, len(arrived)")
    check_finite("y", y)
    if len(key) < 3:
        raise ValueError(f"an outlier score needs at least 3 answers, got {len(key)}")
    j, score = _score(scheme.loo_residual_operator(key), np.asarray(y, dtype=np.float64).reshape(len(key), -1))
    return key[j], score


def detect_outliers(scheme, y, arrived, max_faulty: int | None = None, threshold: float = DEFAULT_THRESHOLD):
    """Worker indices (from ``arrived``) judged wrong, in the order found, and the indices kept.

    ``y``: (len(arrived), ...) answers. ``max_faulty``: most answers dropped (default (|F| - K) // 2, and
    never below K answers kept). ``threshold``: largest/median score ratio that flags an outlier (> 1).
    """
    from nercc.coding._validation import check_arrived

    key = check_arrived(arrived, scheme.n_workers)
    y = check_data("y", y, len(key), "one per arrived worker, len(arrived)")
    check_finite("y", y)
    threshold = check_lam("threshold", threshold)
    if threshold <= 0.0:
        raise ValueError(f"threshold must be > 0 (error over the spread of the answers), got {threshold}")
    spare = len(key) - scheme.n_inputs
    if max_faulty is None:
        max_faulty = max(0, spare // 2)
    max_faulty = min(check_count("max_faulty", max_faulty, minimum=0), max(0, spare))
    y_flat = np.asarray(y, dtype=np.float64).reshape(len(key), -1)
    kept = list(range(len(key)))
    dropped = []
    for _ in range(max_faulty):
        if len(kept) < 3:
            break
        j, score = _score(scheme.loo_residual_operator(tuple(key[i] for i in kept)), y_flat[kept])
        if score <= threshold:
            break
        dropped.append(key[kept[j]])
        del kept[j]
    return tuple(dropped), tuple(key[i] for i in kept)


def robust_decode(scheme, y, arrived, max_faulty: int | None = None,
                  threshold: float = DEFAULT_THRESHOLD) -> RobustDecodeResult:
    """Decode after dropping the answers :func:`detect_outliers` finds; same shapes as ``scheme.decode``."""
    y = np.asarray(y)
    dropped, used = detect_outliers(scheme, y, arrived, max_faulty=max_faulty, threshold=threshold)
    if dropped:
        position = {w: i for i, w in enumerate(check_tuple(arrived))}
        y = y[[position[w] for w in used]]
    return RobustDecodeResult(predictions=scheme.decode(y, used), used=used, dropped=dropped)


def check_tuple(arrived) -> tuple:
    return tuple(int(a) for a in np.asarray(arrived).reshape(-1))

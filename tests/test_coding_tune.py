"""Joint (lam_enc, lam_dec) tuning and the evaluation helper, on smooth and rough nonlinear models."""

import numpy as np
import pytest

from nercc.coding import BACC, NeRCC, TuneResult, evaluate, mean_squared_error, random_straggler_sets, tune

D_IN, N_CLASSES = 20, 10
K, N, S = 12, 60, 20


def softmax_model(seed=0, scale=0.7):
    """A smooth nonlinear f: softmax of a random linear map, (B, 20) -> (B, 10) probabilities."""
    W = np.random.default_rng(seed).normal(size=(D_IN, N_CLASSES)) * scale

    def f(x):
        z = np.asarray(x, dtype=np.float64) @ W
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    return f


class Counting:
    """Wraps f and records every batch it is called on."""

    def __init__(self, f):
        self.f, self.batches = f, []

    def __call__(self, x):
        self.batches.append(np.array(x, copy=True))
        return self.f(x)


def data(seed, n_batches):
    return np.random.default_rng(seed).normal(size=(n_batches * K, D_IN))


def test_tuned_nercc_beats_bacc_on_held_out_inputs():
    f = softmax_model()
    result = tune(f, data(1, 10), K, N, S, n_trials=20, seed=0, progress=False)
    sets = random_straggler_sets(N, S, 30, seed=123)  # other straggler sets, other inputs
    held_out = data(2, 10).reshape(10, K, D_IN)
    mse_nercc = evaluate(result.scheme(), f, held_out, sets).mean()
    mse_bacc = evaluate(BACC(K, N), f, held_out, sets).mean()
    assert mse_nercc < 0.75 * mse_bacc, (mse_nercc, mse_bacc)
    # on the calibration data too, and the tuned pair is never worse than interpolation
    assert result.mse <= result.mse_interp
    assert result.mse < 0.75 * result.mse_bacc


def test_smoothing_is_chosen_when_f_is_rough_and_it_generalises():
    smooth = softmax_model(seed=3)
    V = np.random.default_rng(4).normal(size=(D_IN, N_CLASSES))

    def rough(x):  # a smooth model plus a fast-oscillating component the decoder should smooth out
        return smooth(x) + 0.05 * np.sin(300.0 * (np.asarray(x) @ V))

    result = tune(rough, data(5, 10), K, N, S, n_trials=20, seed=0, progress=False)
    assert result.lam_dec > 0 and result.mse < 0.9 * result.mse_interp
    sets = random_straggler_sets(N, S, 30, seed=7)
    held_out = data(6, 10).reshape(10, K, D_IN)
    tuned = evaluate(result.scheme(), rough, held_out, sets).mean()
    interp = evaluate(NeRCC(K, N), rough, held_out, sets).mean()
    assert tuned < 0.9 * interp, (tuned, interp)


def test_f_runs_once_per_distinct_coded_batch():
    f = Counting(softmax_model())
    grid = [0.0, 1e-6, 1e-3]
    result = tune(f, data(8, 3), K, N, S, lam_grid=grid, n_trials=5, refine=0, baseline=True, progress=False)
    # 3 original batches + 3 lam_enc x 3 coded batches + 3 BACC coded batches, whatever the lam_dec count
    assert len(f.batches) == result.f_calls == 3 + 3 * 3 + 3
    assert sorted(b.shape[0] for b in f.batches) == [K] * 3 + [N] * 12
    distinct = {b.tobytes() for b in f.batches}
    assert len(distinct) == len(f.batches)
    assert len(result.table) == len(grid) ** 2
    assert [r["mse"] for r in result.table] == sorted(r["mse"] for r in result.table)
    row = {(r["lam_enc"], r["lam_dec"]): r["mse"] for r in result.table}
    assert row[(0.0, 0.0)] == result.mse_interp
    assert row[(result.lam_enc, result.lam_dec)] == result.mse == result.table[0]["mse"]


def test_tune_scores_match_evaluate():
    f = softmax_model()
    x = data(9, 4)
    result = tune(f, x, K, N, S, lam_grid=[0.0, 1e-5], n_trials=6, seed=11, refine=0, progress=False)
    sets = random_straggler_sets(N, S, 6, seed=np.random.default_rng(11))  # tune draws them the same way
    for row in result.table:
        scheme = NeRCC(K, N, row["lam_enc"], row["lam_dec"])
        assert evaluate(scheme, f, x.reshape(4, K, D_IN), sets).mean() == pytest.approx(row["mse"], rel=1e-9)
    assert evaluate(BACC(K, N), f, x.reshape(4, K, D_IN), sets).mean() == pytest.approx(
        result.mse_bacc, rel=1e-9
    )


def test_evaluate_per_trial_values():
    f = softmax_model()
    xb = data(10, 2).reshape(2, K, D_IN)
    sets = random_straggler_sets(N, S, 3, seed=1)
    scheme = NeRCC(K, N, 1e-6, 1e-5)
    out = evaluate(scheme, f, xb, sets)
    assert out.shape == (2, 3)
    for b in range(2):
        for t, arrived in enumerate(sets):
            y_hat = scheme.decode(f(scheme.encode(xb[b]))[arrived], arrived)
            assert out[b, t] == pytest.approx(mean_squared_error(y_hat, f(xb[b])), rel=1e-12)
    assert evaluate(scheme, f, xb, sets, f_x=np.stack([f(x) for x in xb])) == pytest.approx(out)


def test_deterministic_and_per_arrived():
    f = softmax_model()
    x = data(12, 4)
    kwargs = dict(lam_grid=[0.0, 1e-6, 1e-4], n_trials=6, seed=5, progress=False, per_arrived=True)
    a = tune(f, x, K, N, [10, 30], **kwargs)
    b = tune(f, x, K, N, [10, 30], **kwargs)
    assert (a.lam_enc, a.lam_dec, a.mse, a.table) == (b.lam_enc, b.lam_dec, b.mse, b.table)
    assert isinstance(a, TuneResult) and a.n_stragglers == [10, 30]
    assert set(a.lam_dec_by_arrived) == {50, 30}
    assert a.lam_dec_for(50) == a.lam_dec_by_arrived[50] and a.lam_dec_for(44) == a.lam_dec
    entry = a.profile_entry()
    assert entry["lam_dec_by_arrived"].keys() == {"30", "50"} and entry["n_inputs"] == K


def test_tune_progress_bar_runs(capsys):
    tune(softmax_model(), data(13, 2), K, N, S, lam_grid=[0.0, 1e-4], n_trials=2, progress=True)
    assert "tune" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(x_calib=np.zeros((5, D_IN))), r"x_calib must hold at least n_inputs = 12"),
        (dict(x_calib=np.full((12, D_IN), np.nan)), r"x_calib contains NaN"),
        (dict(n_stragglers=59), r"n_stragglers must be in 0\.\.58"),
        (dict(n_stragglers=-1), r"n_stragglers must be an integer >= 0"),
        (dict(n_stragglers=[]), r"n_stragglers must be an integer or a non-empty"),
        (dict(lam_grid=[0.0, -1e-3]), r"lam_grid must be a finite number >= 0"),
        (dict(lam_dec_grid=[float("nan")]), r"lam_dec_grid must be a finite number >= 0"),
        (dict(n_trials=0), r"n_trials must be an integer >= 1"),
        (dict(n_workers=10), r"n_workers must be >= n_inputs = 12"),
        (dict(f=lambda x: x[:1]), r"f must map a batch of 12 rows to 12 rows"),
        (dict(f="model"), r"f must be a callable"),
    ],
)
def test_tune_rejects_bad_arguments(kwargs, pattern):
    args = dict(
        f=softmax_model(),
        x_calib=data(14, 2),
        n_inputs=K,
        n_workers=N,
        n_stragglers=S,
        lam_grid=[0.0, 1e-4],
        n_trials=2,
        progress=False,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        tune(**args)


def test_evaluate_rejects_wrong_batch_shape():
    with pytest.raises(ValueError, match=r"x_batches must have shape \(n_batches, n_inputs = 12"):
        evaluate(NeRCC(K, N), softmax_model(), np.zeros((2, 5, D_IN)), [[0, 1, 2]])
    with pytest.raises(ValueError, match="predictions shape"):
        mean_squared_error(np.zeros((2, 3)), np.zeros((3, 2)))


def test_tune_on_the_real_lenet5_onnx_model():
    """The same claim on the shipped LeNet5 (onnxruntime) and real MNIST digits: tune on training
    images, score on test images and other straggler sets."""
    from nercc.data import load_mnist
    from nercc.models import OnnxModel, load_model_info
    from nercc.preprocessing import preprocess

    info = load_model_info("lenet5")
    f = OnnxModel("lenet5", threads=1)
    k, n, s = 4, 12, 2
    train, _ = load_mnist("train")
    test, _ = load_mnist("test")
    result = tune(f, preprocess(info, train[:200]), k, n, s, n_trials=20, seed=0, progress=False)
    held_out = preprocess(info, test[:200]).reshape((50, k) + tuple(info.input_shape))
    sets = random_straggler_sets(n, s, 20, seed=1)
    tuned = evaluate(result.scheme(), f, held_out, sets).mean()
    bacc = evaluate(BACC(k, n), f, held_out, sets).mean()
    interp = evaluate(NeRCC(k, n), f, held_out, sets).mean()
    assert tuned < 0.8 * bacc and tuned < interp, (tuned, interp, bacc)

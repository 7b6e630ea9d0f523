"""The metrics pytorch-grad-cam and Quantus ship, against them on the same inputs (issue #15, item 6).

ROAD (MoRF / LeRF averages and ROADCombined) against pytorch-grad-cam 1.5.7 on a torch net and its ONNX export
(same weights), with the imputation noise drawn in numpy and fed to both; faithfulness correlation, sparseness,
complexity and max-sensitivity against Quantus 0.6.0 with the same random subsets / noise (``np.random.seed``).
The numba imputation kernel is also checked against a dense numpy solve.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxfix.evaluate.metrics import METRICS, road
from onnxfix.evaluate.metrics import complexity as cx
from onnxfix.evaluate.metrics import faithfulness_correlation as fc
from onnxfix.evaluate.metrics import robustness as rb
from onnxfix.evaluate.metrics.context import MetricContext, computed_values
from tests.conftest import import_peer

HERE = Path(__file__).resolve().parent
RTOL = 1e-4


def _blob(h: int, w: int, cy: float, cx_: float, s: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.exp(-((yy - cy) ** 2 + (xx - cx_) ** 2) / (2 * s * s)).astype(np.float32)


# ----------------------------------------------------------------------------------------- numpy-only checks


def test_imputation_kernel_equals_dense_solve():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(3, 12, 15)).astype(np.float32)
    cam = _blob(12, 15, 4, 9, 3) + 0.05 * rng.random((12, 15)).astype(np.float32)
    for p, order in ((10, "morf"), (50, "lerf"), (80, "morf")):
        known = road.keep_mask(cam, p, order)
        assert 0 < known.sum() < known.size
        ours = road.noisy_linear_impute(img, known, noise=0.0)
        ref = road.linear_impute_reference(img, known)
        np.testing.assert_allclose(ours.reshape(3, -1)[:, ~known.reshape(-1)], ref, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(ours[:, known], img[:, known])  # kept pixels untouched


def test_keep_masks_follow_the_percentiles():
    cam = np.arange(100, dtype=np.float32).reshape(10, 10) / 99
    assert road.keep_mask(cam, 80, "morf").sum() == 80  # MoRF at 80: the top 20 % removed
    assert not road.keep_mask(cam, 80, "morf")[9, 9]
    assert road.keep_mask(cam, 80, "lerf").sum() == 80  # LeRF at 80: the bottom 20 % removed
    assert not road.keep_mask(cam, 80, "lerf")[0, 0]


def test_sparseness_and_complexity_extremes():
    delta = np.zeros((8, 8))
    delta[3, 4] = 5.0
    flat = np.ones((8, 8))
    assert cx.sparseness(delta) > 0.98 and cx.sparseness(flat) == pytest.approx(0.0, abs=1e-9)
    assert cx.complexity(delta) == pytest.approx(0.0, abs=1e-9)
    assert cx.complexity(flat) == pytest.approx(np.log(64), rel=1e-9)
    assert np.isnan(cx.complexity(np.zeros((4, 4))))


def test_registry_and_computed_values():
    for name in ("road", "faithfulness_corr", "complexity", "robustness"):
        assert METRICS[name].compute is not None
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)
    w = np.random.default_rng(2).normal(size=x.size)

    def score(b):
        return np.asarray(b, np.float64).reshape(len(b), -1) @ w

    ctx = MetricContext(x=x, heatmap=_blob(16, 16, 5, 9, 3), label=0, score_fn=score,
                        explain_fn=lambda b: np.stack([_blob(16, 16, 5, 9, 3)] * len(b)), seed=3)
    v = computed_values(["pointing", "road", "faithfulness_corr", "complexity", "robustness"], lambda: ctx)
    assert set(v) == {"road_morf", "road_lerf", "road_combined", "faithfulness_corr", "sparseness", "complexity",
                      "max_sensitivity"}
    assert v["max_sensitivity"] == 0.0  # the same map for every noisy copy
    assert all(np.isfinite(val) for val in v.values())
    assert computed_values(["pointing"], lambda: pytest.fail("context built for nothing")) == {}


# ----------------------------------------------------------------------------------------- against the peers

torch = pytest.importorskip("torch")


def _pgc():
    return import_peer("pytorch_grad_cam")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    sys.path.insert(0, str(HERE))
    import parity_models as pm

    from onnxfix.api import Explainer
    from onnxfix.evaluate.runner import Evaluator

    torch.set_num_threads(1)
    exp = pm.build("plain", tmp_path_factory.mktemp("peers"))
    ex = Explainer(str(exp.path), threads=1)
    with torch.no_grad():
        cls = int(exp.net(torch.from_numpy(exp.x)).argmax())
    return exp, ex, cls, Evaluator(ex, ["road"]).score_fn(exp.x, cls, None)


def _cam(exp, ex, cls) -> np.ndarray:
    """A map in [0, 1] that tells the metrics something: a blob plus a little texture (the metrics do not care
    which method made it)."""
    rng = np.random.default_rng(cls)
    m = _blob(32, 32, 12, 20, 6) + 0.1 * rng.random((32, 32)).astype(np.float32)
    return (m / m.max()).astype(np.float32)


def _input_map(x: np.ndarray) -> np.ndarray:
    """A deterministic explanation of a (N, C, H, W) batch: the channel mean of x² (changes with input noise)."""
    return (np.asarray(x, np.float32) ** 2).mean(axis=1)


def test_road_equals_pytorch_grad_cam(plain, monkeypatch):
    _pgc()
    from pytorch_grad_cam.metrics.road import (
        ROADCombined,
        ROADLeastRelevantFirstAverage,
        ROADMostRelevantFirstAverage,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    exp, ex, cls, score = plain
    cam = _cam(exp, ex, cls)
    pcts = road.PERCENTILES
    rng = np.random.default_rng(7)
    # one noise draw per imputation, in ROADCombined's order (LeRF percentiles, then MoRF)
    sizes = [(3, int((~road.keep_mask(cam, p, o)).sum())) for o in ("lerf", "morf") for p in pcts]
    draws = [rng.standard_normal(s).astype(np.float32) for s in sizes]

    feed = list(draws)
    monkeypatch.setattr(torch, "randn_like", lambda t: torch.from_numpy(feed.pop(0)).reshape(t.shape))
    xt = torch.from_numpy(exp.x.copy())
    targets = [ClassifierOutputSoftmaxTarget(cls)]
    ref_comb = float(ROADCombined(percentiles=list(pcts))(xt, cam[None], targets, exp.net)[0])
    assert not feed
    feed[:] = draws[:len(pcts)]
    ref_lerf = float(ROADLeastRelevantFirstAverage(list(pcts))(xt, cam[None], targets, exp.net)[0])
    feed[:] = draws[len(pcts):]
    ref_morf = float(ROADMostRelevantFirstAverage(list(pcts))(xt, cam[None], targets, exp.net)[0])

    mine_feed = list(draws)
    got = road.road(exp.x, cam, score, noise_fn=lambda shape: mine_feed.pop(0))
    assert not mine_feed
    for key, ref in (("road_morf", ref_morf), ("road_lerf", ref_lerf), ("road_combined", ref_comb)):
        assert abs(got[key] - ref) <= RTOL * max(abs(ref), 1e-3), (key, got[key], ref)
    assert abs(ref_morf) > 1e-3 and abs(ref_lerf) > 1e-4  # the removal changes the score: the case tests something


quantus = import_peer("quantus")  # quantus imports torchvision: tests/stubs stands in where it is absent


def test_faithfulness_correlation_equals_quantus(plain):
    exp, ex, cls, score = plain
    cam = _cam(exp, ex, cls)
    np.random.seed(11)
    q = quantus.FaithfulnessCorrelation(nr_runs=40, subset_size=224, perturb_baseline="black",
                                        disable_warnings=True, return_aggregate=False)
    ref = q(model=exp.net, x_batch=exp.x, y_batch=np.array([cls]), a_batch=cam[None, None], device="cpu",
            softmax=True)
    mine = fc.faithfulness_correlation(exp.x, cam, score, nr_runs=40, subset_size=224, seed=11)
    assert abs(mine - float(ref[0])) <= RTOL * abs(float(ref[0])), (mine, ref)
    assert abs(mine) > 0.05


def test_sparseness_and_complexity_equal_quantus(plain):
    exp, ex, cls, _ = plain
    rng = np.random.default_rng(4)
    a = np.stack([_cam(exp, ex, cls), rng.normal(size=(32, 32)).astype(np.float32)])[:, None]
    x = np.repeat(exp.x, 2, axis=0)
    y = np.array([cls, cls])
    for i in range(2):  # Quantus normalises by the max over the whole batch: one image at a time
        s = quantus.Sparseness(disable_warnings=True)(model=None, x_batch=x[i:i + 1], y_batch=y[i:i + 1],
                                                        a_batch=a[i:i + 1].copy())
        c = quantus.Complexity(disable_warnings=True)(model=None, x_batch=x[i:i + 1], y_batch=y[i:i + 1],
                                                        a_batch=a[i:i + 1].copy())
        assert cx.sparseness(a[i, 0]) == pytest.approx(float(s[0]), rel=RTOL)
        assert cx.complexity(a[i, 0]) == pytest.approx(float(c[0]), rel=RTOL)


def test_max_sensitivity_equals_quantus(plain):
    exp, ex, cls, _ = plain
    seen = []

    def explain(model=None, inputs=None, targets=None, **kwargs):
        inputs = np.asarray(inputs, np.float32)
        seen.append(inputs.copy())
        return _input_map(inputs)[:, None]

    a = explain(inputs=exp.x)
    np.random.seed(5)
    q = quantus.MaxSensitivity(nr_samples=4, lower_bound=0.2, disable_warnings=True)
    ref = q(model=exp.net, x_batch=exp.x, y_batch=np.array([cls]), a_batch=a, explain_func=explain, device="cpu")
    mine = rb.max_sensitivity(a[0, 0], lambda b: explain(inputs=b)[:, 0], exp.x, nr_samples=4, seed=5)
    np.testing.assert_array_equal(np.concatenate(seen[1:5]), rb.perturbed_inputs(exp.x, 4, 0.2, 5))
    assert mine == pytest.approx(float(ref[0]), rel=RTOL)
    assert mine > 0


def test_evaluate_runs_the_peer_families(tmp_path):
    """``onnxfix evaluate --metrics road,...`` fills the new columns once the runner calls computed_values."""
    from onnxfix.evaluate import runner

    if "computed_values" not in inspect.getsource(runner):
        pytest.skip("onnxfix.evaluate.runner does not call metrics.context.computed_values yet")
    from onnxfix.evaluate.cli import cmd_evaluate

    root = HERE.parent
    out = tmp_path / "o"
    code = cmd_evaluate([str(root / "sample_models/digits_loc.onnx"), str(root / "sample_data/digits_loc"),
                         "--methods", "gradcam", "--metrics", "road,faithfulness_corr,complexity,robustness",
                         "--limit", "2", "--out", str(out), "--no-chart", "--json"])
    assert code == 0
    rows = runner.read_rows(next(out.glob("*.jsonl")))
    assert rows and all(r["error"] is None for r in rows)
    for r in rows:
        for k in ("road_morf", "road_lerf", "road_combined", "faithfulness_corr", "sparseness", "complexity",
                  "max_sensitivity"):
            assert r["values"][k] is not None, k

"""Evaluation metrics on hand-made cases with known answers (issue #4)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from scipy import stats
from sklearn.metrics import roc_auc_score

from onnxfix.evaluate.metrics import METRICS, wsol
from onnxfix.evaluate.metrics import confidence as conf
from onnxfix.evaluate.metrics import deletion as dele
from onnxfix.evaluate.metrics import mask_iou as mk
from onnxfix.evaluate.metrics import pointing as pt
from onnxfix.evaluate.metrics import sanity as san
from onnxfix.evaluate.metrics.faithfulness import faithfulness
from onnxfix.evaluate.metrics.ranks import rankdata, roc_auc, spearman
from tests.conftest import tiny_cnn


def _delta(hw, y, x):
    m = np.zeros(hw, np.float32)
    m[y, x] = 1.0
    return m


def _box_region(hw, box):
    return conf.box_mask(hw, box)


# -- ranks ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_match_scipy_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, size=200).astype(float)  # many ties
    b = rng.normal(size=200)
    np.testing.assert_allclose(rankdata(a), stats.rankdata(a))
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    y = rng.random(200) > 0.6
    assert roc_auc(y, a) == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert math.isnan(spearman(np.ones(5), b[:5]))
    assert math.isnan(roc_auc(np.ones(5, bool), b[:5]))


def test_registry_lists_every_family():
    assert set(METRICS) == {"pointing", "pointing_top5", "wsol", "mask", "faithfulness", "confidence", "deletion",
                            "sanity", "road", "faithfulness_corr", "complexity", "robustness"}


# -- pointing ------------------------------------------------------------------------------------------------------
def test_pointing_delta_inside_outside_and_tolerance():
    hw = (20, 30)
    region = _box_region(hw, [10, 5, 20, 15])
    assert pt.pointing_hit(_delta(hw, 7, 12), region) == 1.0
    assert pt.pointing_hit(_delta(hw, 2, 2), region) == 0.0
    # 3 px left of the box: a hit only with a tolerance of at least 3 px
    assert pt.pointing_hit(_delta(hw, 8, 7), region) == 0.0
    assert pt.pointing_hit(_delta(hw, 8, 7), region, tolerance=3) == 1.0
    assert pt.pointing_hit(_delta(hw, 8, 7), region, tolerance=2.5) == 0.0
    assert math.isnan(pt.pointing_hit(_delta(hw, 7, 12), np.zeros(hw, bool)))
    # ties: any maximum inside counts (Quantus)
    m = _delta(hw, 2, 2) + _delta(hw, 7, 12)
    assert pt.pointing_hit(m, region) == 1.0
    assert pt.pointing_hit(np.zeros(hw), region) == 0.0  # a flat map points nowhere


def test_pointing_top5_rejection():
    # classes 3 (present, hit), 1 (absent, weak → rejected), 2 (absent, strong → accepted: miss),
    # 4 (present, strong, miss), 0 (absent, weak)
    acc = pt.pointing_top5([3, 1, 2, 4, 0], hits=[1.0, 1.0, 1.0, 0.0, 0.0], strengths=[10, 1, 9, 8, 4],
                           present=[3, 4], threshold=0.5)
    assert acc == pytest.approx(3 / 5)  # 3 hit, 1 rejected, 0 rejected
    assert pt.pointing_top5([3], [1.0], [0.0], [3]) == 0.0  # an all-zero map accepts nothing


# -- WSOL ----------------------------------------------------------------------------------------------------------
def test_iou_known_values():
    assert wsol.iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert wsol.iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert wsol.iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0
    assert wsol.iou(None, [0, 0, 1, 1]) == 0.0
    assert wsol.best_iou([0, 0, 10, 10], [[20, 20, 30, 30], [0, 0, 10, 20]]) == pytest.approx(0.5)


def test_box_from_heatmap_is_exact_for_a_block_map():
    m = np.zeros((40, 50), np.float32)
    m[10:20, 5:25] = 1.0
    m[30:32, 40:42] = 1.0  # a smaller component is ignored
    assert wsol.box_from_heatmap(m) == [5.0, 10.0, 25.0, 20.0]
    assert wsol.box_from_heatmap(np.zeros((4, 4))) is None


def test_box_from_points_drops_outliers():
    rng = np.random.default_rng(0)
    cluster = np.stack([rng.uniform(40, 60, 200), rng.uniform(20, 30, 200)], 1)
    pts = np.vstack([cluster, [[190.0, 190.0]]])
    b = wsol.box_from_points(pts, (200, 200))
    assert b[0] >= 40 and b[2] <= 61 and b[1] >= 20 and b[3] <= 31


def test_localisation_errors():
    gt = [[0, 0, 10, 10]]
    good, bad = [0, 0, 10, 10], [50, 50, 60, 60]
    assert wsol.localisation_error([(3, good)], gt, [3], 1) == 0.0
    assert wsol.localisation_error([(2, good), (3, good)], gt, [3], 1) == 1.0  # wrong top-1 class
    assert wsol.localisation_error([(2, good), (3, good)], gt, [3], 5) == 0.0
    assert wsol.localisation_error([(3, bad)], gt, [3], 5) == 1.0  # right class, wrong box
    assert wsol.localisation_error([(7, good)], gt, [3, 7], 1) == 0.0  # an accepted synonym


# -- masks ---------------------------------------------------------------------------------------------------------
def test_mask_metrics_perfect_inverted_random():
    hw = (32, 32)
    mask = np.zeros(hw, bool)
    mask[8:24, 4:12] = True
    perfect = mask.astype(np.float32)
    assert mk.mask_iou(perfect, mask) == 1.0
    assert mk.mask_iou_auc(perfect, mask) == 1.0
    assert mk.relevance_mass(perfect, mask) == 1.0
    assert mk.region_auc(perfect, mask) == 1.0
    inv = 1.0 - perfect
    assert mk.mask_iou(inv, mask) == 0.0 and mk.relevance_mass(inv, mask) == 0.0 and mk.region_auc(inv, mask) == 0.0
    rnd = np.random.default_rng(0).random(hw)
    assert abs(mk.region_auc(rnd, mask) - 0.5) < 0.08
    assert abs(mk.relevance_mass(rnd, mask) - mask.mean()) < 0.03
    # half of the mask lit: IoU 0.5 at every threshold
    half = np.zeros(hw, np.float32)
    half[8:16, 4:12] = 1
    assert mk.mask_iou(half, mask) == 0.5 and mk.mask_iou_auc(half, mask) == pytest.approx(0.5)
    # a ramp inside the mask: the IoU falls with the threshold
    ramp = perfect * np.linspace(0.05, 1, 32)[:, None]
    curve = mk.mask_iou_curve(ramp, mask)
    assert curve[0] == 1.0 and np.all(np.diff(curve) <= 0) and curve[-1] < 0.1
    assert math.isnan(mk.mask_iou(perfect, np.zeros(hw, bool)))
    with pytest.raises(ValueError, match="shape"):
        mk.mask_iou(perfect, mask[:5])


# -- faithfulness --------------------------------------------------------------------------------------------------
def test_faithfulness_rank_correlation():
    occ = np.arange(64, dtype=np.float32).reshape(8, 8)
    assert faithfulness(occ, occ) == pytest.approx(1.0)
    assert faithfulness(-occ * 3 + 1, occ) == pytest.approx(-1.0)
    big = np.kron(occ, np.ones((4, 4), np.float32))  # a map at 4x the occlusion resolution
    assert faithfulness(big, occ) > 0.99
    rnd = np.random.default_rng(1).random((8, 8))
    assert abs(faithfulness(rnd, occ)) < 0.35


# -- confidence ----------------------------------------------------------------------------------------------------
def _linear_score(weights):
    """score(batch) = Σ w·x / Σ w over the first channel (a model whose evidence is the weighted pixels)."""
    w = np.asarray(weights, np.float64)

    def f(batch):
        return (batch[:, 0] * w).sum(axis=(1, 2)) / w.sum()

    return f


def test_confidence_keep_region():
    hw = (4, 4)
    heat = np.arange(16, dtype=np.float32).reshape(hw)
    keep = conf.top_fraction_mask(heat, 0.25)
    assert keep.sum() == 4 and keep[3].all()
    assert conf.box_mask(hw, [1, 1, 3, 4]).sum() == 6
    x = np.ones((1, 2, 4, 4), np.float32)
    k = conf.apply_keep(x, keep, baseline=-1.0)
    assert (k[0, :, 3] == 1).all() and (k[0, :, :3] == -1).all()
    k2 = conf.apply_keep(np.ones((1, 4, 4, 3), np.float32), keep, 0.0, layout="nhwc")
    assert k2[0, 3].all() and not k2[0, :3].any()
    w = np.zeros(hw)
    w[3] = 1.0  # all evidence in the bottom row
    s = conf.keep_region_scores(x, [keep, ~keep], _linear_score(w))
    np.testing.assert_allclose(s, [1.0, 0.0])
    assert conf.average_drop(0.8, 0.2) == pytest.approx(75.0)
    assert conf.average_drop(0.8, 0.9) == 0.0 and conf.confidence_increase(0.8, 0.9) == 1.0
    assert conf.confidence_increase(0.8, 0.8) == 0.0


# -- deletion / insertion ------------------------------------------------------------------------------------------
def test_deletion_insertion_known_auc():
    x = np.ones((1, 1, 2, 2), np.float32)
    w = np.array([[4.0, 3.0], [2.0, 1.0]])
    f = _linear_score(w)
    d, i, dc, ic = dele.deletion_insertion(x, w, f, steps=4)
    np.testing.assert_allclose(dc, [1, 0.6, 0.3, 0.1, 0])
    np.testing.assert_allclose(ic, [0, 0.4, 0.7, 0.9, 1])
    assert d == pytest.approx(0.375) and i == pytest.approx(0.625)
    d_rev, i_rev, _, _ = dele.deletion_insertion(x, -w, f, steps=4)  # the worst ordering
    assert d_rev > d and i_rev < i
    assert dele.curve_auc(np.array([1.0, 1.0])) == 1.0


def test_perturbation_inputs_nhwc_and_mode():
    x = np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3)
    out = dele.perturbation_inputs(x, np.array([[1.0, 0.0], [0.0, 0.0]]), 4, "deletion", layout="nhwc")
    assert out.shape == (5, 2, 2, 3) and (out[1, 0, 0] == 0).all() and (out[1, 1, 1] == x[0, 1, 1]).all()
    with pytest.raises(ValueError):
        dele.perturbation_inputs(x, np.zeros((2, 2)), 4, "sideways")


# -- sanity --------------------------------------------------------------------------------------------------------
def test_randomisation_cascade_changes_top_layers_only():
    m = tiny_cnn()
    layers = san.parameter_layers(m)
    assert [n for n, _ in layers] == ["fc", "conv1"]  # top first
    assert san.cascade_steps(2) == {"cascade_first": 1, "cascade_half": 1, "cascade_all": 2}
    orig = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    r1 = {t.name: numpy_helper.to_array(t) for t in san.randomised_copy(m, 1).graph.initializer}
    r2 = {t.name: numpy_helper.to_array(t) for t in san.randomised_copy(m, 2).graph.initializer}
    assert not np.array_equal(r1["fw"], orig["fw"]) and np.array_equal(r1["w"], orig["w"])
    assert not np.array_equal(r2["w"], orig["w"])
    np.testing.assert_array_equal(r1["fw"], r2["fw"])  # a layer keeps its new weights down the cascade
    assert abs(r1["fw"].std() - orig["fw"].std()) < 0.2 * orig["fw"].std()
    onnx.checker.check_model(san.randomised_copy(m, 2))
    # the original is untouched
    assert all(np.array_equal(numpy_helper.to_array(t), orig[t.name]) for t in m.graph.initializer)


def test_class_sensitivity_and_random_class():
    a = np.random.default_rng(0).random((6, 6))
    assert san.class_sensitivity(a, a) == pytest.approx(1.0)
    picks = {san.random_other_class(5, 2, s) for s in range(200)}
    assert picks == {0, 1, 3, 4}
    with pytest.raises(ValueError):
        san.random_other_class(1, 0, 0)

"""The compiled backtrack (one pass over a plan) against the per-op rules, and batches against single images.

The rule walk is the reference (``tests/test_fixation_rules.py`` checks it against ``fixation_reference.py``); the
compiled pass must give the same location sets for every tensor, with the forward exposing only
:func:`needed_tensors` (the rule walk then reads unexposed shapes from the plan and rebuilds virtual Pads). A batch
traced in one walk must give every image the points it gets alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnxfix.kernels import warm

import onnxfix
from onnxfix.fixations import PLANS, PlanCache, SelectionPolicy, needed_tensors, trace
from onnxfix.fixations.plan import path_nodes

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted(p.stem for p in (ROOT / "sample_models").glob("*.onnx"))
REAL = ROOT / ".cache/real_models/models"


# sample models with an input besides the image get the value their JSON documents
EXTRA_INPUTS = {"cond_shapes": {"query": np.array([[1.0, 0.0]], np.float32)}}


@pytest.fixture(autouse=True)
def _compiled_kernels(monkeypatch):
    """The compiled pass itself is under test here (a cold numba cache would otherwise run its numpy twin)."""
    monkeypatch.setattr(warm, "MODE", "numba")


def _twins_agree(g, vals, source, start, rows) -> None:
    """The numpy twin of the compiled pass (numba's cache cold) gives the same sets as the jitted pass."""
    fast = trace(g, vals, source, start, rows)
    warm.MODE = "numpy"
    try:
        _same(trace(g, vals, source, start, rows), fast)
    finally:
        warm.MODE = "numba"


def _explainer(name: str) -> onnxfix.Explainer:
    path = ROOT / "sample_models" / f"{name}.onnx"
    ex = onnxfix.Explainer(str(path), inputs=EXTRA_INPUTS.get(name))
    why = ex.methods()["fixations"]
    if why is not None:  # e.g. NMS inside the graph: fixations do not apply (and say so)
        pytest.skip(f"fixations do not apply to {name}: {why}")
    return ex


def _input(ex: onnxfix.Explainer, n: int, seed: int = 0) -> np.ndarray:
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in ex.model.runtime.session().get_inputs()[0].shape]
    shape[0] = n
    return np.random.default_rng(seed).uniform(-1, 2, shape).astype(np.float32)


def _all_tensors(g, source, start):
    return list(dict.fromkeys(t for n in path_nodes(g, source, start) for t in list(n.inputs) + list(n.outputs)
                              if t and t not in g.constants))


def _same(a, b) -> None:
    assert set(a.locations) == set(b.locations)
    for k in b.locations:
        np.testing.assert_array_equal(a.locations[k], b.locations[k], err_msg=k)


@pytest.mark.parametrize("name", SAMPLES)
def test_compiled_equals_rules_with_fewer_tensors(name):
    ex = _explainer(name)
    m = ex.model
    if m.runtime.session().get_inputs()[0].type != "tensor(float)":
        pytest.skip("non-float input")
    g = m.graph
    x = _input(ex, 1)
    need = needed_tensors(g, m.input, m.head.logits)
    every = _all_tensors(g, m.input, m.head.logits)
    assert set(need) <= set(every) | {m.head.logits}
    few = m.runtime.run({m.input: x}, need)
    few[m.input] = x
    full = m.runtime.run({m.input: x}, every)
    full[m.input] = x
    logits = few[m.head.logits]
    rng = np.random.default_rng(1)
    top = np.array([np.unravel_index(int(np.argmax(logits)), logits.shape)], np.int64)
    more = np.stack([rng.integers(0, d, 4) for d in logits.shape], axis=1)
    for start in (top, np.concatenate([top, more])):
        fast = trace(g, few, m.input, m.head.logits, start)
        _same(fast, trace(g, full, m.input, m.head.logits, start, policy=SelectionPolicy()))
        _same(fast, trace(g, few, m.input, m.head.logits, start, policy=SelectionPolicy()))
        _twins_agree(g, few, m.input, m.head.logits, start)
        assert len(fast.at(m.input))


def test_sample_plans_compile():
    """Every sample CNN runs the compiled pass (the captioner's LSTM keeps the rule walk)."""
    for name in ("resnet_shapes", "inception_shapes", "mobile_shapes", "digits_cnn"):
        ex = _explainer(name)
        m = ex.model
        x = _input(ex, 1)
        vals = m.runtime.run({m.input: x}, needed_tensors(m.graph, m.input, m.head.logits))
        vals[m.input] = x
        cache = PlanCache()
        trace(m.graph, vals, m.input, m.head.logits, np.zeros((1, 2), np.int64), plans=cache)
        plan = cache.get(m.graph, vals, m.input, m.head.logits)
        assert plan.compiled, (name, plan.why_not)


@pytest.mark.parametrize("name", ["resnet_shapes", "inception_shapes", "mobile_shapes", "captioner"])
def test_batch_in_one_walk_equals_each_image_alone(name):
    ex = _explainer(name)
    bm = ex.model.batch_model()
    if bm is None:
        pytest.skip("no batch-dynamic copy")
    n = 5
    xb = _input(ex, n, seed=3)
    need = needed_tensors(bm.graph, bm.input, bm.head.logits)
    vals = bm.runtime.run({bm.input: xb}, need)
    vals[bm.input] = xb
    logits = vals[bm.head.logits]
    ax = bm.head.batch_axis if bm.head.batch_axis is not None else 0
    rows = []
    for i in range(n):
        item = np.take(logits, i, axis=ax)
        idx = list(np.unravel_index(int(np.argmax(item)), item.shape))
        idx.insert(ax, i)
        rows.append(idx)
    rows.append(list(rows[1]))  # a repeated start row changes nothing
    batch = trace(bm.graph, vals, bm.input, bm.head.logits, np.array(rows, np.int64))
    _twins_agree(bm.graph, vals, bm.input, bm.head.logits, np.array(rows, np.int64))
    ref = trace(bm.graph, vals, bm.input, bm.head.logits, np.array(rows, np.int64), policy=SelectionPolicy())
    _same(batch, ref)
    got = batch.at(bm.input)
    for i in range(n):
        xi = xb[i:i + 1]
        one = ex.model.runtime.run({ex.model.input: xi}, needed_tensors(ex.model.graph, ex.model.input,
                                                                        ex.model.head.logits))
        one[ex.model.input] = xi
        start = np.array([rows[i]], np.int64)
        start[:, ax] = 0
        alone = trace(ex.model.graph, one, ex.model.input, ex.model.head.logits, start).at(ex.model.input)
        mine = got[got[:, 0] == i].copy()
        mine[:, 0] = 0
        np.testing.assert_array_equal(mine, alone)


def test_plans_are_cached_per_graph_and_shape():
    ex = _explainer("resnet_shapes")
    m = ex.model
    x = _input(ex, 1)
    vals = m.runtime.run({m.input: x}, needed_tensors(m.graph, m.input, m.head.logits))
    vals[m.input] = x
    a = PLANS.get(m.graph, vals, m.input, m.head.logits)
    assert PLANS.get(m.graph, dict(vals), m.input, m.head.logits) is a
    other = onnxfix.Explainer(str(ROOT / "sample_models/resnet_shapes.onnx")).model.graph
    assert PLANS.get(other, vals, m.input, m.head.logits) is not a


def test_unexposed_value_is_named():
    ex = _explainer("resnet_shapes")
    m = ex.model
    x = _input(ex, 1)
    vals = {m.input: x, m.head.logits: m.runtime.run({m.input: x}, [m.head.logits])[m.head.logits]}
    with pytest.raises(KeyError, match="not exposed"):
        trace(m.graph, vals, m.input, m.head.logits, np.zeros((1, 2), np.int64))


@pytest.mark.integration
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite0_dynamo", "opennsfw"])
def test_real_models_compiled_equals_rules(name):
    path = REAL / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{name} not fetched (python tools/real_models.py)")
    ex = onnxfix.Explainer(str(path))
    m, g = ex.model, ex.model.graph
    x = _input(ex, 1)
    few = m.runtime.run({m.input: x}, needed_tensors(g, m.input, m.head.logits))
    few[m.input] = x
    full = m.runtime.run({m.input: x}, _all_tensors(g, m.input, m.head.logits))
    full[m.input] = x
    logits = few[m.head.logits]
    start = np.array([np.unravel_index(int(np.argmax(logits)), logits.shape)], np.int64)
    fast = trace(g, few, m.input, m.head.logits, start)
    assert PLANS.get(g, few, m.input, m.head.logits).compiled
    _same(fast, trace(g, full, m.input, m.head.logits, start, policy=SelectionPolicy()))
    _twins_agree(g, few, m.input, m.head.logits, start)


@pytest.mark.parametrize("name", ["resnet_shapes", "inception_shapes", "mobile_shapes", "digits_cnn"])
def test_numpy_twin_ties_and_nan(name):
    """Values rounded to halves (ties everywhere) with a few NaNs: the numpy twin picks what the jitted pass picks
    (first maximum, first NaN), in every op of the plan, for a batch of two."""
    ex = _explainer(name)
    bm = ex.model.batch_model() or ex.model
    x = _input(ex, 2 if bm is not ex.model else 1, seed=4)
    vals = bm.runtime.run({bm.input: x}, needed_tensors(bm.graph, bm.input, bm.head.logits))
    vals[bm.input] = x
    rng = np.random.default_rng(5)
    for k, v in list(vals.items()):
        v = (np.round(v * 2) / 2).astype(np.float32)
        v.reshape(-1)[rng.integers(0, v.size, 3)] = np.nan
        vals[k] = v
    logits = vals[bm.head.logits]
    rows = np.stack([rng.integers(0, d, 8) for d in logits.shape], axis=1)
    assert PLANS.get(bm.graph, vals, bm.input, bm.head.logits).compiled
    _twins_agree(bm.graph, vals, bm.input, bm.head.logits, rows)

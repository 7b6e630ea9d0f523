"""ONNX Runtime's blocked layout handed to the compiled fixation pass (onnxfix.nchwc).

Two things must hold for the fixations to stay exactly what they were: the blocked buffers hold ONNX Runtime's NCHW
values bit for bit (checked against the NCHW session of the same model), and the compiled pass reads a blocked
tensor at the same logical element it reads in NCHW (checked machine-independently: NCHW values blocked by numpy
with b = 4, 8 and 16 and NaN in the padded channels, against the trace of the NCHW values — the rule walk's sets).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnxfix.kernels import warm

import onnxfix
from onnxfix import nchwc
from onnxfix.fixations import SelectionPolicy, needed_tensors, trace
from onnxfix.nchwc import Blocked, plain

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / ".cache/real_models/models"
CNNS = ["resnet_shapes", "inception_shapes", "mobile_shapes", "digits_cnn"]


@pytest.fixture(autouse=True)
def _compiled_kernels(monkeypatch):
    monkeypatch.setattr(warm, "MODE", "numba")


def block(a: np.ndarray, b: int) -> Blocked:
    """``a`` (N, C, H, W) in the NCHWc layout with block ``b``, the padded channels NaN (never read)."""
    n, c, h, w = a.shape
    cp = -(-c // b) * b
    pad = np.full((n, cp, h, w), np.nan, np.float32)
    pad[:, :c] = a
    raw = np.ascontiguousarray(pad.reshape(n, cp // b, b, h, w).transpose(0, 1, 3, 4, 2)).reshape(n, cp, h, w)
    return Blocked(raw, b, c)


def _same(a, b) -> None:
    assert set(a.locations) == set(b.locations)
    for k in b.locations:
        np.testing.assert_array_equal(a.locations[k], b.locations[k], err_msg=k)


def _input(model, n: int, seed: int) -> np.ndarray:
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in model.runtime.session().get_inputs()[0].shape]
    shape[0] = n
    return np.random.default_rng(seed).uniform(-1, 2, shape).astype(np.float32)


@pytest.mark.parametrize("b", [4, 8, 16])
def test_blocked_round_trip(b):
    a = np.random.default_rng(0).normal(size=(2, 21, 3, 5)).astype(np.float32)
    t = block(a, b)
    assert t.shape == a.shape and t.raw.shape[1] % b == 0
    np.testing.assert_array_equal(t.numpy(), a)
    np.testing.assert_array_equal(np.asarray(t), a)
    assert plain(t).shape == a.shape and plain(a) is a
    with pytest.raises(ValueError, match="not an NCHWc buffer"):
        Blocked(t.raw, b, t.raw.shape[1] + 1)  # more channels than stored
    with pytest.raises(ValueError, match="not an NCHWc buffer"):
        Blocked(np.zeros((1, 12, 2, 2), np.float32), 12, 12)  # not a power of two


@pytest.mark.parametrize("name", CNNS)
def test_compiled_pass_reads_blocked_values_in_place(name):
    """Every 4-D value blocked with b = 4, 8, 16: the same sets as NCHW (jitted pass and numpy twin), for a batch
    of two with several start rows, on random values and on values rounded to halves (ties everywhere)."""
    ex = onnxfix.Explainer(str(ROOT / "sample_models" / f"{name}.onnx"))
    bm = ex.model.batch_model() or ex.model
    x = _input(bm, 2 if bm is not ex.model else 1, seed=7)
    need = needed_tensors(bm.graph, bm.input, bm.head.logits)
    vals = bm.runtime.run({bm.input: x}, need)
    vals[bm.input] = x
    logits = vals[bm.head.logits]
    rng = np.random.default_rng(2)
    rows = np.concatenate([np.array([np.unravel_index(int(np.argmax(logits)), logits.shape)]),
                           np.stack([rng.integers(0, d, 6) for d in logits.shape], axis=1)]).astype(np.int64)
    for ties in (False, True):
        ref_vals = {k: ((np.round(v * 2) / 2).astype(np.float32) if ties and k != bm.input else v)
                    for k, v in vals.items()}
        ref = trace(bm.graph, ref_vals, bm.input, bm.head.logits, rows)
        _same(ref, trace(bm.graph, ref_vals, bm.input, bm.head.logits, rows, policy=SelectionPolicy()))
        four = [k for k, v in ref_vals.items() if k not in (bm.input, bm.head.logits) and v.ndim == 4]
        assert four, name
        for b in (4, 8, 16):
            bl = {k: (block(v, b) if k in four else v) for k, v in ref_vals.items()}
            _same(trace(bm.graph, bl, bm.input, bm.head.logits, rows), ref)
            warm.MODE = "numpy"
            try:
                _same(trace(bm.graph, bl, bm.input, bm.head.logits, rows), ref)
            finally:
                warm.MODE = "numba"
            # a policy walk (the per-op rules) takes the blocked values back to NCHW
            _same(trace(bm.graph, bl, bm.input, bm.head.logits, rows, policy=SelectionPolicy()), ref)


def test_block_size_probe():
    b = nchwc.block_size()
    assert b is None or (b >= 4 and b & (b - 1) == 0)
    assert nchwc.block_size() == b  # once per process


def _native_matches_nchw(model, x) -> int:
    need = needed_tensors(model.graph, model.input, model.head.logits)
    nat = model.runtime.run({model.input: x}, need, native=need)
    ref = model.runtime.run({model.input: x}, need)
    assert set(nat) == set(ref)
    blocked = [k for k, v in nat.items() if isinstance(v, Blocked)]
    assert model.head.logits not in blocked
    for k in ref:
        np.testing.assert_array_equal(np.asarray(nat[k]), ref[k], err_msg=k)  # bit for bit
    logits = ref[model.head.logits]
    start = np.array([np.unravel_index(int(np.argmax(logits)), logits.shape)], np.int64)
    nat[model.input] = ref[model.input] = x
    _same(trace(model.graph, nat, model.input, model.head.logits, start),
          trace(model.graph, ref, model.input, model.head.logits, start))
    return len(blocked)


def test_runtime_hands_over_ort_blocked_buffers():
    ex = onnxfix.Explainer(str(ROOT / "sample_models/resnet_shapes.onnx"))
    bm = ex.model.batch_model()
    n = _native_matches_nchw(ex.model, _input(ex.model, 1, seed=1))
    n_b = _native_matches_nchw(bm, _input(bm, 3, seed=2))
    if nchwc.block_size() is None:
        assert n == n_b == 0  # no exact layout on this machine: NCHW values, as before
    else:
        assert n >= 8 and n_b >= 8  # its 3×3 convs and adds run blocked


def test_explain_same_points_with_and_without_native_layout(monkeypatch):
    path = str(ROOT / "sample_models/resnet_shapes.onnx")
    xs = [_input(onnxfix.Explainer(path).model, 1, seed=s) for s in range(3)]
    got = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("ONNXFIX_NCHWC", flag)
        ex = onnxfix.Explainer(path)
        one = ex.explain(xs[0], method="fixations")
        many = ex.explain(xs, method="fixations", batch_size=3)
        got[flag] = [one.points] + [e.points for e in many]
        disc = ex.explain(xs[0], method="discernible")  # its policy walk: NCHW values
        got[flag].append(disc.points)
        if flag == "0":
            need = needed_tensors(ex.model.graph, ex.model.input, ex.model.head.logits)
            assert ex.model.runtime.native_session(need, need) is None
    for a, b in zip(got["1"], got["0"], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.integration
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite0_dynamo", "opennsfw"])
def test_real_models_native_layout_is_exact(name):
    path = REAL / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{name} not fetched (python tools/real_models.py)")
    ex = onnxfix.Explainer(str(path))
    n = _native_matches_nchw(ex.model, _input(ex.model, 1, seed=3))
    assert nchwc.block_size() is None or n >= 50

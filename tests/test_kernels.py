"""Kernels vs slow references: exact agreement (indices and tie-breaking) on many random cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numba
import numpy as np
import onnxfix.kernels as kernels
import onnxfix.kernels.conv as conv_module
import onnxfix.kernels.pool as pool_module
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnxfix.kernels import (
    conv_backtrack,
    fc_positive,
    gaussian_blur,
    neighbour_counts,
    pool_argmax,
    splat,
    window_positive,
)

try:  # tests/ may or may not be a package
    from . import kernel_reference as ref
except ImportError:
    import kernel_reference as ref


def _values(rng: np.random.Generator, shape, mode: int) -> np.ndarray:
    """Random float32 array; most modes are integer-valued so that ties really happen."""
    if mode == 0:
        v = rng.integers(-2, 3, size=shape)
    elif mode == 1:
        v = rng.integers(0, 2, size=shape)  # zeros and ones: many exact ties
    elif mode == 2:
        v = -rng.integers(1, 4, size=shape)  # all negative
    elif mode == 3:
        v = np.zeros(shape)
    elif mode == 4:  # mixed magnitudes: float64 summation order matters
        v = rng.standard_normal(shape) * 10.0 ** rng.integers(-4, 5, size=shape)
    else:
        v = rng.standard_normal(shape)
    return np.asarray(v, dtype=np.float32)


def _out_size(n: int, k: int, s: int, p0: int, p1: int, d: int) -> int:
    return max(0, (n + p0 + p1 - d * (k - 1) - 1) // s + 1)


def _random_geometry(rng: np.random.Generator):
    kh, kw = (int(v) for v in rng.integers(1, 5, 2))
    sh, sw = (int(v) for v in rng.integers(1, 4, 2))
    dh, dw = (int(v) for v in rng.integers(1, 4, 2))
    pt, pl, pb, pr = (int(v) for v in rng.integers(0, 4, 4))
    h, w = (int(v) for v in rng.integers(1, 9, 2))
    oh = _out_size(h, kh, sh, pt, pb, dh)
    ow = _out_size(w, kw, sw, pl, pr, dw)
    return (kh, kw), (sh, sw), (pt, pl), (dh, dw), (h, w), (oh, ow)


def _random_locs(rng: np.random.Generator, n_chan: int, oh: int, ow: int, k: int) -> np.ndarray:
    # mostly in-range locations, some beyond the output (windows partly/fully outside the input)
    oy = rng.integers(-1, oh + 2, k)
    ox = rng.integers(-1, ow + 2, k)
    return np.stack([rng.integers(0, n_chan, k), oy, ox], axis=1).astype(np.int64)


def test_exports() -> None:
    assert sorted(kernels.__all__) == sorted(
        [
            "conv_backtrack",
            "pool_argmax",
            "window_positive",
            "fc_positive",
            "splat",
            "gaussian_blur",
            "neighbour_counts",
            "label_components",
        ]
    )


# --------------------------------------------------------------------------------------------- conv


def test_conv_backtrack_hand_example() -> None:
    x = np.array(
        [
            [[1, 2, 0], [0, 3, 1], [2, 0, 1]],
            [[0, 1, 1], [1, 0, 4], [0, 0, 0]],
        ],
        dtype=np.float32,
    )
    w = np.ones((1, 2, 2, 2), dtype=np.float32)
    w[0, 1] = -1.0
    locs = np.array([[0, 0, 0], [0, 1, 1], [0, 0, 1]])
    got = conv_backtrack(x, w, locs, (1, 1), (0, 0), (1, 1), 1)
    # (0,0): channel sums 6 vs -2 -> ch0, max of [1,2,0,3] at (1,1)
    # (1,1): sums 5 vs -4 -> ch0, [3,1,0,1] -> (1,1)
    # (0,1): sums 6 vs -6 -> ch0, [2,0,3,1] -> (1,1)
    np.testing.assert_array_equal(got, [[0, 1, 1], [0, 1, 1], [0, 1, 1]])
    np.testing.assert_array_equal(got, ref.conv_backtrack_ref(x, w, locs, (1, 1), (0, 0), (1, 1), 1))


def test_conv_backtrack_ties_and_padding() -> None:
    x = np.zeros((3, 4, 4), dtype=np.float32)
    w = np.ones((2, 3, 3, 3), dtype=np.float32)
    # all contributions 0: first channel, first *valid* window position (top-left is padding)
    got = conv_backtrack(x, w, np.array([[0, 0, 0], [1, 3, 3]]), (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_array_equal(got, [[0, 0, 0], [0, 2, 2]])
    # all valid contributions negative: padding (contribution 0 in a real conv) still never wins
    x = np.ones((1, 2, 2), dtype=np.float32)
    w = -np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    got = conv_backtrack(x, w, np.array([[0, 0, 0]]), (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_array_equal(got, [[0, 0, 0]])  # w[1,1] = -5 is the largest valid contribution
    # window completely outside the input
    got = conv_backtrack(x, w, np.array([[0, 5, 0], [0, -3, 0]]), (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_array_equal(got, [[-1, -1, -1], [-1, -1, -1]])


def _check_conv_random(seed: int, n_cases: int, layout: str | None = None) -> None:
    rng = np.random.default_rng(seed)
    for case in range(n_cases):
        kernel, strides, pads, dilations, (h, w), (oh, ow) = _random_geometry(rng)
        kind = case % 4
        if kind == 0:  # depthwise (optionally with a channel multiplier)
            group = int(rng.integers(1, 5))
            cin_g, cout_g = 1, int(rng.integers(1, 3))
        elif kind == 1:
            group, cin_g, cout_g = 1, int(rng.integers(1, 6)), int(rng.integers(1, 4))
        else:
            group, cin_g, cout_g = int(rng.integers(2, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
        if case % 10 == 0:
            kernel = (1, 1)
        c_in, c_out = group * cin_g, group * cout_g
        x = _values(rng, (c_in, h, w), int(rng.integers(0, 6)))
        wt = _values(rng, (c_out, cin_g) + kernel, int(rng.integers(0, 6)))
        locs = _random_locs(rng, c_out, oh, ow, int(rng.integers(0, 25)))
        got = conv_backtrack(x, wt, locs, strides, pads, dilations, group, _layout=layout)
        exp = ref.conv_backtrack_ref(x, wt, locs, strides, pads, dilations, group)
        assert got.dtype == np.int64 and got.shape == (len(locs), 3)
        np.testing.assert_array_equal(got, exp, err_msg=f"case {case}")


@pytest.mark.parametrize("layout", ["hwc", "chw"])
def test_conv_backtrack_random(layout: str) -> None:
    """Both kernel layouts (channel-last after a transpose; channel-first without) equal the reference."""
    _check_conv_random(1234, 300, layout)


def test_conv_backtrack_wide_channels() -> None:
    # many channels with mixed magnitudes: channel sums depend on the accumulation order
    rng = np.random.default_rng(7)
    for mode in (0, 1, 4, 5):
        x = _values(rng, (96, 9, 9), mode)
        w = _values(rng, (8, 48, 3, 3), mode)
        locs = _random_locs(rng, 8, 9, 9, 150)
        exp = ref.conv_backtrack_ref(x, w, locs, (1, 1), (1, 1), (2, 1), 2)
        for layout in ("hwc", "chw"):
            got = conv_backtrack(x, w, locs, (1, 1), (1, 1), (2, 1), 2, _layout=layout)
            np.testing.assert_array_equal(got, exp)


def test_conv_backtrack_validation() -> None:
    x = np.zeros((4, 5, 5), dtype=np.float32)
    w = np.zeros((4, 2, 3, 3), dtype=np.float32)
    with pytest.raises(ValueError):
        conv_backtrack(x, w, np.array([[4, 0, 0]]), (1, 1), (0, 0), (1, 1), 2)
    with pytest.raises(ValueError):
        conv_backtrack(x, w, np.array([[0, 0, 0]]), (1, 1), (0, 0), (1, 1), 1)
    with pytest.raises(ValueError):
        conv_backtrack(x, w, np.array([[0, 0, 0]]), (0, 1), (0, 0), (1, 1), 2)
    empty = conv_backtrack(x, w, np.zeros((0, 3), dtype=np.int64), (1, 1), (0, 0), (1, 1), 2)
    assert empty.shape == (0, 3) and empty.dtype == np.int64


# --------------------------------------------------------------------------------------------- pool


def _check_pool_random(seed: int, n_cases: int) -> None:
    rng = np.random.default_rng(seed)
    for case in range(n_cases):
        kernel, strides, pads, dilations, (h, w), (oh, ow) = _random_geometry(rng)
        c = int(rng.integers(1, 4))
        x = _values(rng, (c, h, w), int(rng.integers(0, 6)))
        locs = _random_locs(rng, c, oh, ow, int(rng.integers(0, 25)))
        got = pool_argmax(x, locs, kernel, strides, pads, dilations)
        exp = ref.pool_argmax_ref(x, locs, kernel, strides, pads, dilations)
        assert got.dtype == np.int64 and got.shape == (len(locs), 3)
        np.testing.assert_array_equal(got, exp, err_msg=f"pool case {case}")
        got = window_positive(x, locs, kernel, strides, pads, dilations)
        exp = ref.window_positive_ref(x, locs, kernel, strides, pads, dilations)
        assert got.dtype == np.int64 and got.shape[1] == 3
        np.testing.assert_array_equal(got, exp, err_msg=f"window case {case}")


def test_pool_and_window_positive_random() -> None:
    _check_pool_random(99, 300)


def test_pool_argmax_edge_cases() -> None:
    x = -np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3)
    # padded positions never win even though every valid value is negative
    got = pool_argmax(x, np.array([[0, 0, 0], [0, 2, 2], [0, 9, 9]]), (3, 3), (1, 1), (1, 1), (1, 1))
    np.testing.assert_array_equal(got, [[0, 0, 0], [0, 1, 1], [-1, -1, -1]])
    # ties: first row-major; NaN behaves as in np.argmax (first NaN wins)
    x = np.array([[[1, 3, 3], [3, np.nan, np.nan], [0, 0, 0]]], dtype=np.float32)
    got = pool_argmax(x, np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0]]), (2, 2), (1, 1), (0, 0), (1, 1))
    np.testing.assert_array_equal(got, [[0, 1, 1], [0, 1, 1], [0, 1, 1]])
    got = pool_argmax(x, np.array([[0, 0, 0]]), (1, 3), (1, 1), (0, 0), (1, 1))
    np.testing.assert_array_equal(got, [[0, 0, 1]])
    x = np.array([[[np.nan, 1.0], [2.0, 3.0]]], dtype=np.float32)
    locs = np.array([[0, 0, 0]])
    np.testing.assert_array_equal(
        pool_argmax(x, locs, (2, 2), (1, 1), (0, 0), (1, 1)),
        ref.pool_argmax_ref(x, locs, (2, 2), (1, 1), (0, 0), (1, 1)),
    )


def test_window_positive_order_and_duplicates() -> None:
    x = np.array([[[1, 0, 2], [-1, 3, 0], [0, 0, 4]]], dtype=np.float32)
    locs = np.array([[0, 1, 1], [0, 0, 0]])
    got = window_positive(x, locs, (2, 2), (1, 1), (0, 0), (1, 1))
    np.testing.assert_array_equal(got, [[0, 1, 1], [0, 2, 2], [0, 0, 0], [0, 1, 1]])
    empty = window_positive(-np.abs(x), locs, (2, 2), (1, 1), (0, 0), (1, 1))
    assert empty.shape == (0, 3) and empty.dtype == np.int64


# ----------------------------------------------------------------------------------------------- fc


def _check_fc_random(seed: int, n_cases: int) -> None:
    rng = np.random.default_rng(seed)
    for case in range(n_cases):
        m, k, n = (int(v) for v in rng.integers(1, 9, 3))
        a = _values(rng, (m, k), int(rng.integers(0, 6)))
        b = _values(rng, (k, n), int(rng.integers(0, 6)))
        locs = np.stack([rng.integers(0, m, 6), rng.integers(0, n, 6)], 1)[: int(rng.integers(0, 7))]
        got_a, got_b = fc_positive(a, b, locs)
        exp_a, exp_b = ref.fc_positive_ref(a, b, locs)
        assert got_a.dtype == np.bool_ and got_b.dtype == np.bool_
        np.testing.assert_array_equal(got_a, exp_a, err_msg=f"case {case}")
        np.testing.assert_array_equal(got_b, exp_b, err_msg=f"case {case}")


def test_fc_positive_random() -> None:
    _check_fc_random(5, 150)


def test_fc_positive_hand_example() -> None:
    a = np.array([[1, -1, 0], [2, 2, -2]], dtype=np.float32)
    b = np.array([[1, -1], [-1, -1], [5, -3]], dtype=np.float32)
    mask_a, mask_b = fc_positive(a, b, np.array([[0, 1], [1, 1]]))
    np.testing.assert_array_equal(mask_a, [[False, True, False], [False, False, True]])
    np.testing.assert_array_equal(mask_b, [[False, False], [False, True], [False, True]])


# ------------------------------------------------------------------------------------------ density


def test_splat() -> None:
    rng = np.random.default_rng(11)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 12, 2))
        pts = rng.uniform(-2, max(h, w) + 2, (int(rng.integers(0, 60)), 2))
        pts[::3] = np.round(pts[::3] * 2) / 2  # exact .5 boundaries
        got = splat(pts, h, w)
        assert got.dtype == np.float32 and got.shape == (h, w)
        np.testing.assert_array_equal(got, ref.splat_ref(pts, h, w))
    pts = np.array([[-0.5, -0.5], [1.49, 2.5], [np.nan, 0], [0, np.inf], [2.5, 0], [0.2, -0.2], [0.2, 0.2]])
    expected = np.zeros((3, 3), dtype=np.float32)
    expected[0, 0] = 3
    np.testing.assert_array_equal(splat(pts, 3, 3), expected)


@settings(max_examples=60, deadline=None, database=None)
@given(
    h=st.integers(1, 25),
    w=st.integers(1, 25),
    sigma=st.floats(-1.0, 12.0, allow_nan=False),
    seed=st.integers(0, 2**31 - 1),
)
def test_gaussian_blur(h: int, w: int, sigma: float, seed: int) -> None:
    img = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    got = gaussian_blur(img, sigma)
    assert got.dtype == np.float32 and got.shape == (h, w)
    np.testing.assert_allclose(got, ref.gaussian_blur_ref(img, sigma), rtol=1e-5, atol=1e-6)


def test_gaussian_blur_properties() -> None:
    img = np.zeros((41, 41), dtype=np.float32)
    img[20, 20] = 1.0
    out = gaussian_blur(img, 2.0)
    assert math.isclose(float(out.sum()), 1.0, rel_tol=1e-5)  # mass preserved away from the border
    np.testing.assert_allclose(out, out.T, atol=1e-9)
    copy = gaussian_blur(img, 0.0)
    assert copy is not img and np.array_equal(copy, img)


def _check_neighbours_random(seed: int, n_cases: int) -> None:
    rng = np.random.default_rng(seed)
    for case in range(n_cases):
        n = int(rng.integers(1, 120))
        if case % 3 == 0:  # integer grid: exact distance ties at the radius
            pts = rng.integers(0, 12, (n, 2)).astype(np.float64)
            radius = float(rng.integers(0, 5))
        elif case % 3 == 1:
            pts = rng.uniform(-50, 50, (n, 2)) * 10.0 ** rng.integers(-3, 4)
            radius = float(rng.uniform(0, 30)) * 10.0 ** rng.integers(-3, 4)
        else:
            pts = rng.normal(size=(n, 2))
            radius = -float(rng.uniform(0, 1))  # only radius**2 matters
        got = neighbour_counts(pts, radius)
        assert got.dtype == np.int64 and got.shape == (n,)
        np.testing.assert_array_equal(got, ref.neighbour_counts_ref(pts, radius), err_msg=f"case {case}")


def test_neighbour_counts_random() -> None:
    _check_neighbours_random(3, 60)


def test_neighbour_counts_edge_cases() -> None:
    pts = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [1e12, -1e12]])
    np.testing.assert_array_equal(neighbour_counts(pts, 5.0), [3, 3, 3, 1])
    np.testing.assert_array_equal(neighbour_counts(pts, 0.0), [2, 1, 2, 1])
    np.testing.assert_array_equal(neighbour_counts(pts, 1e13), [4, 4, 4, 4])
    assert neighbour_counts(np.zeros((0, 2)), 1.0).shape == (0,)
    huge = np.array([[-1e308, 0.0], [1e308, 0.0], [1e308, 1.0]])
    np.testing.assert_array_equal(neighbour_counts(huge, 2.0), ref.neighbour_counts_ref(huge, 2.0))
    with pytest.raises(ValueError):
        neighbour_counts(np.array([[np.nan, 0.0]]), 1.0)


# ------------------------------------------------------------------------------------------- sanity


def test_parallel_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # small inputs normally run single-threaded; force the multi-threaded path on a few random cases
    monkeypatch.setattr(conv_module, "_PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(pool_module, "_MASK_BUDGET", 7)  # window_positive in blocks of few locations
    _check_conv_random(21, 40)
    _check_pool_random(22, 40)
    _check_fc_random(23, 20)
    _check_neighbours_random(24, 12)
    img = np.random.default_rng(25).random((13, 17))
    np.testing.assert_allclose(gaussian_blur(img, 2.5), ref.gaussian_blur_ref(img, 2.5), rtol=1e-5, atol=1e-6)


def test_thread_count_restored() -> None:
    before = numba.get_num_threads()
    conv_backtrack(np.ones((1, 2, 2)), np.ones((1, 1, 1, 1)), np.array([[0, 0, 0]]), (1, 1), (0, 0), (1, 1), 1)
    assert numba.get_num_threads() == before


def test_conv_backtrack_realistic_size() -> None:
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((64, 56, 56)), 0).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    k = 20000
    locs = np.stack([rng.integers(0, 64, k), rng.integers(0, 56, k), rng.integers(0, 56, k)], 1)
    got = conv_backtrack(x, w, locs, (1, 1), (1, 1), (1, 1), 1)
    assert got.shape == (k, 3)
    assert (got[:, 0] >= 0).all() and (got[:, 0] < 64).all()
    assert (np.abs(got[:, 1:] - locs[:, 1:]) <= 1).all()
    sub = slice(0, k, 400)
    exp = ref.conv_backtrack_ref(x, w, locs[sub], (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_array_equal(got[sub], exp)


def test_label_components_matches_reference() -> None:
    from onnxfix.kernels import label_components

    rng = np.random.default_rng(11)
    for _ in range(60):
        h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        mask = rng.random((h, w)) < rng.uniform(0.05, 0.7)
        np.testing.assert_array_equal(label_components(mask), ref.label_components_ref(mask))
    ring = np.zeros((7, 7), bool)
    ring[1, 1:6] = ring[5, 1:6] = ring[1:6, 1] = ring[1:6, 5] = True
    ring[3, 3] = True
    lab = label_components(ring)
    assert lab.max() == 2 and lab[3, 3] == 2  # the centre is not 8-connected to the ring
    assert (label_components(np.eye(5, dtype=bool)) == np.eye(5, dtype=np.int64)).all()  # diagonals connect


def test_density_numpy_twins_equal_kernels() -> None:
    """While numba's cache is cold the density maps come from numpy twins: bit-identical to the jitted kernels."""
    from onnxfix.kernels import density, warm

    rng = np.random.default_rng(7)
    for case in range(30):
        n = int(rng.integers(0, 300))
        pts = rng.uniform(-3, 40, (n, 2)).round(int(rng.integers(0, 3)))
        if n and case % 5 == 0:
            pts[rng.integers(0, n)] = [np.nan, np.inf][case % 2]
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        p64 = np.ascontiguousarray(pts, np.float64)
        np.testing.assert_array_equal(density._splat_numpy(p64, h, w), density._splat_kernel(p64, h, w))
        img = rng.standard_normal((h, w)) * 10.0 ** rng.integers(-3, 4, (h, w))
        sigma = float(rng.uniform(0.3, 6))
        radius = max(1, math.ceil(3.0 * sigma))
        t = np.arange(-radius, radius + 1, dtype=np.float64)
        wts = np.exp(-0.5 * (t / sigma) ** 2)
        wts /= wts.sum()
        np.testing.assert_array_equal(density._blur_rows_numpy(img, wts, radius), density._blur_rows(img, wts, radius))
        fin = pts[np.isfinite(pts).all(axis=1)]
        radius_n = float(rng.uniform(0, 6))
        old = warm.MODE
        try:
            warm.MODE = "numpy"
            got = density.neighbour_counts(fin, radius_n)
            blur_np = density.gaussian_blur(img, sigma)
            warm.MODE = "numba"
            np.testing.assert_array_equal(got, density.neighbour_counts(fin, radius_n))
            np.testing.assert_array_equal(blur_np, density.gaussian_blur(img, sigma))
        finally:
            warm.MODE = old


@pytest.mark.slow
def test_two_warmers_fill_one_cold_cache(tmp_path) -> None:
    """Two background warmers started at once on an empty numba cache (and an explanation running meanwhile on
    the numpy twins) leave a cache a new process loads without compiling; the explanation is the same."""
    import os
    import subprocess
    import sys

    cache = tmp_path / "numba"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "ONNXFIX_KERNELS": "numba", "OMP_NUM_THREADS": "1"}
    warmers = [subprocess.Popen([sys.executable, "-c", "from onnxfix.kernels.warm import warm_all; warm_all()"],
                                env=env) for _ in range(2)]
    code = ("import json, sys, numpy as np, onnxfix\n"
            "from onnxfix.kernels import warm\n"
            "from onnxfix.kernels.plan import run_plan\n"
            "e = onnxfix.Explainer('sample_models/resnet_shapes.onnx').explain("
            "'sample_models/resnet_shapes.png', method='fixations')\n"
            "print(json.dumps([warm.MODE, e.points.tolist(), float(e.heatmap.sum()), list(e.box)]))\n")
    root = Path(__file__).resolve().parents[1]
    cold = subprocess.run([sys.executable, "-c", code], env={**env, "ONNXFIX_KERNELS": "numpy"}, cwd=root,
                          capture_output=True, text=True, check=True)
    for w in warmers:
        assert w.wait(timeout=600) == 0
    probe = ("from onnxfix.kernels import warm, density; from onnxfix.kernels.plan import run_plan, compile_now\n"
             "import numpy as np\n"
             "args = (np.array([[0, 0, 1, 0, 0]], np.int64), np.zeros(1, np.int64), np.zeros(1, np.float64),"
             " np.zeros(1, np.float32), np.zeros(1, np.int64), np.zeros(6, np.int64), 2, 0, np.zeros(1, np.int64))\n"
             "assert warm._on_disk(run_plan, args)\n"
             "compile_now(); warm_pts = np.zeros((2, 2)); density.splat(warm_pts, 3, 3)\n"
             "assert not run_plan.stats.cache_misses, run_plan.stats\n")
    subprocess.run([sys.executable, "-c", probe], env={**env, "ONNXFIX_KERNELS": "auto"}, cwd=root, check=True)
    warm_run = subprocess.run([sys.executable, "-c", code], env={**env, "ONNXFIX_KERNELS": "auto"}, cwd=root,
                              capture_output=True, text=True, check=True)
    a, b = json.loads(cold.stdout), json.loads(warm_run.stdout)
    assert a[0] == "numpy" and b[0] == "auto"
    assert a[1:] == b[1:]

"""Same inputs → same numbers as Quantus 0.6 for the metrics it shares with onnxfix.evaluate (issue #4).

Shared: PointingGame, RelevanceMassAccuracy (= AttributionLocalisation without weighting), AUC, PixelFlipping
(our deletion curve without its first, unperturbed point; Quantus' AUC is the trapezoid with dx = 1, ours is
normalised to x ∈ [0, 1] and includes the start) and RandomLogit (our class sensitivity with Spearman as the
similarity). Quantus is called with ``normalise=False, abs=False`` so both sides see the same maps.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import import_peer

quantus = import_peer("quantus")  # quantus imports torchvision: tests/stubs stands in where it is absent
torch = pytest.importorskip("torch")

from onnx import numpy_helper  # noqa: E402

from onnxfix.api import Explainer  # noqa: E402
from onnxfix.evaluate.metrics import deletion as dele  # noqa: E402
from onnxfix.evaluate.metrics import mask_iou as mk  # noqa: E402
from onnxfix.evaluate.metrics import pointing as pt  # noqa: E402
from onnxfix.evaluate.metrics import sanity as san  # noqa: E402
from onnxfix.evaluate.runner import Evaluator  # noqa: E402
from tests.conftest import tiny_cnn  # noqa: E402

QUIET = {"disable_warnings": True, "normalise": False, "abs": False}


def _maps_and_masks(seed=0, n=12, hw=(16, 16)):
    rng = np.random.default_rng(seed)
    a = rng.random((n, 1, *hw)).astype(np.float32)
    a[:3] = np.round(a[:3] * 4) / 4  # ties, several maxima
    a[3] = 0.0
    a[3, 0, 5, 5] = 1.0  # a delta
    s = np.zeros((n, 1, *hw), np.float32)
    for i in range(n):
        y0, x0 = rng.integers(0, hw[0] - 4, 2)
        s[i, 0, y0:y0 + rng.integers(2, 8), x0:x0 + rng.integers(2, 8)] = 1
    s[3, 0, 4:7, 4:7] = 1
    return a, s


def test_localisation_metrics_equal_quantus():
    a, s = _maps_and_masks()
    x = np.zeros((len(a), 1, 16, 16), np.float32)
    y = np.zeros(len(a), int)
    q_pg = quantus.PointingGame(**QUIET)(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s)
    q_rma = quantus.RelevanceMassAccuracy(**QUIET)(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s)
    q_auc = quantus.AUC(**QUIET)(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s)
    for i in range(len(a)):
        m, r = a[i, 0], s[i, 0].astype(bool)
        assert pt.pointing_hit(m, r) == float(q_pg[i])
        assert mk.relevance_mass(m, r) == pytest.approx(float(q_rma[i]), rel=1e-5)
        assert mk.region_auc(m, r) == pytest.approx(float(q_auc[i]), abs=1e-12)
    assert float(q_pg[3]) == 1.0


def _gray_tiny():
    """tests.conftest.tiny_cnn with one input channel (Quantus' pixel flipping counts elements, not pixels)."""
    proto = tiny_cnn(softmax=False)
    for t in proto.graph.initializer:
        if t.name == "w":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:, :1].copy(), "w"))
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1
    return proto


class _TorchTiny(torch.nn.Module):
    """The gray tiny CNN in torch, with the ONNX model's weights."""

    def __init__(self, proto):
        super().__init__()
        w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in proto.graph.initializer}
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(64, 5)
        with torch.no_grad():
            self.conv.weight.copy_(w["w"])
            self.conv.bias.copy_(w["b"])
            self.fc.weight.copy_(w["fw"])
            self.fc.bias.copy_(w["fb"])

    def forward(self, x):
        return self.fc(torch.flatten(torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2), 1))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    proto = _gray_tiny()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 1, 8, 8)).astype(np.float32)
    return proto, _TorchTiny(proto).eval(), Explainer(proto), x


def test_deletion_curve_equals_quantus_pixel_flipping(tiny):
    proto, net, ex, x = tiny
    logits = net(torch.from_numpy(x)).detach().numpy()
    y = logits.argmax(1)
    rng = np.random.default_rng(5)
    heat = np.stack([rng.permutation(64).reshape(8, 8).astype(np.float32) for _ in x])  # distinct values
    a = heat[:, None]
    steps = 16
    q = quantus.PixelFlipping(features_in_step=64 // steps, perturb_baseline=0.0, **QUIET)
    q_curves = np.asarray(q(model=net, x_batch=x, y_batch=y, a_batch=a, device="cpu", softmax=True))
    # (Quantus 0.6's return_auc_per_sample calls np.trapz, gone in numpy 2: its AUC is trapezoid(curve, dx=1))
    ev = Evaluator(ex, ["deletion"])
    for i in range(len(x)):
        f = ev.score_fn(x[i:i + 1], int(y[i]), None)
        d_auc, _, dc, _ = dele.deletion_insertion(x[i:i + 1], heat[i], f, steps=steps)
        np.testing.assert_allclose(dc[1:], q_curves[i], rtol=1e-5, atol=1e-6)
        assert d_auc == pytest.approx(float(np.trapezoid(dc, dx=1.0 / steps)), rel=1e-9)


def test_class_sensitivity_equals_quantus_random_logit(tiny):
    proto, net, ex, x = tiny
    y = net(torch.from_numpy(x)).detach().numpy().argmax(1)
    calls = []

    def explain(model, inputs, targets, **kwargs):
        out = np.stack([ex.explain(np.asarray(inputs[i:i + 1], np.float32), method="gradcam",
                                   target=int(targets[i])).heatmap for i in range(len(inputs))])
        calls.append(np.asarray(targets).copy())
        return out[:, None]

    a = explain(net, x, y)
    q = quantus.RandomLogit(num_classes=5, seed=42, similarity_func=quantus.similarity_func.correlation_spearman,
                            **QUIET)
    scores = q(model=net, x_batch=x, y_batch=y, a_batch=a, explain_func=explain, device="cpu")
    off = calls[-1]
    assert (off != y).all() and np.isfinite(np.asarray(scores, float)).any()
    for i in range(len(x)):
        mine = san.class_sensitivity(a[i, 0], ex.explain(x[i:i + 1], method="gradcam", target=int(off[i])).heatmap)
        assert mine == pytest.approx(float(scores[i]), abs=1e-9, nan_ok=True)

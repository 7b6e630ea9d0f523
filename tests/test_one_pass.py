"""Input-gradient methods on a batch-1 classifier run forward, seed and backward in one ORT call: the in-graph
ArgMax→OneHot seed must give exactly what the two-call path (forward, then a fed one-hot seed) gives."""

from __future__ import annotations

import numpy as np
import pytest

from onnxfix import Explainer
from onnxfix.autodiff import GradientProgram
from onnxfix.methods import METHODS
from tests.conftest import SAMPLES


@pytest.fixture(scope="module")
def ex():
    return Explainer(SAMPLES / "resnet_shapes.onnx")


def _two_pass(ex, image, method, target):
    mdl, m = ex.model, METHODS[method]
    x, _, _ = ex.prepare(image)
    values = mdl.runtime.run({mdl.input: x}, m.forward_tensors(mdl))
    tgt = mdl.resolve_target(values[mdl.head.logits], target)
    return tgt, m.explain(mdl, x, values, tgt).attribution


@pytest.mark.parametrize("method", ["saliency", "guided-backprop", "deconvnet"])
@pytest.mark.parametrize("target", [None, 2, "square"])
def test_one_pass_equals_two_pass(ex, method, target):
    image = SAMPLES / "resnet_shapes.png"
    x, _, _ = ex.prepare(image)
    one = METHODS[method].explain_in_one_pass(ex.model, x, target, None)
    assert one is not None
    logits, tgt1, res = one
    tgt2, att2 = _two_pass(ex, image, method, target)
    assert (tgt1.index, tgt1.coords) == (tgt2.index, tgt2.coords)
    np.testing.assert_array_equal(res.attribution, att2)
    assert ex.explain(image, method=method, target=target).target == tgt2.index


def test_argmax_seed_program_matches_fed_seed(ex):
    mdl = ex.model
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.normal(size=(1, *mdl.input_shape[1:])).astype(np.float32)
        fed = GradientProgram(mdl.graph, of=mdl.head.logits, wrt=[mdl.input])
        top = GradientProgram(mdl.graph, of=mdl.head.logits, wrt=[mdl.input], seed="argmax")
        out_top = top.run({mdl.input: x})
        seed = np.zeros_like(out_top[mdl.head.logits])
        seed.reshape(-1)[np.argmax(out_top[mdl.head.logits])] = 1
        out_fed = fed.run({mdl.input: x}, seed)
        np.testing.assert_array_equal(out_top["grad:" + mdl.input], out_fed["grad:" + mdl.input])
        assert "seed" not in " ".join(i.name for i in top.session.get_inputs())


def test_sequence_outputs_keep_the_two_pass_path():
    ex = Explainer(SAMPLES / "captioner.onnx")
    x, _, _ = ex.prepare(SAMPLES / "captioner.png")
    assert ex.model.single_logits_shape() is None
    assert METHODS["saliency"].explain_in_one_pass(ex.model, x, None, None) is None


def test_one_pass_target_out_of_range(ex):
    from onnxfix.errors import InputError

    with pytest.raises(InputError, match="out of range"):
        ex.explain(SAMPLES / "resnet_shapes.png", method="saliency", target=99)

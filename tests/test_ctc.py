"""CTC outputs: greedy decoding, forced alignment (against brute force over every path), the blank from the head /
metadata, the default step skipping the blank, the Text target, and class names from exporters' metadata."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfix import heads
from onnxfix.errors import InputError
from onnxfix.io.labels import metadata_labels
from onnxfix.model import Model
from onnxfix.targets import Class, Step, Text, ctc_align, ctc_greedy, log_softmax, parse_target

# -- decoding ----------------------------------------------------------------------------------------------------


def test_greedy_collapses_repeats_then_drops_blanks():
    assert ctc_greedy([0, 1, 1, 0, 1, 2, 2, 0], blank=0) == [1, 1, 2]
    assert ctc_greedy([3, 3, 3], blank=3) == []
    assert ctc_greedy([5, 5, 36, 5, 7], blank=36) == [5, 5, 7]
    assert ctc_greedy([], blank=0) == []


def _brute_best(logp: np.ndarray, labels: list[int], blank: int):
    """The most probable path decoding to ``labels``, by enumerating all C^T paths (the definition)."""
    T, C = logp.shape
    best, arg = -np.inf, None
    for path in itertools.product(range(C), repeat=T):
        if ctc_greedy(list(path), blank) == labels:
            s = logp[np.arange(T), list(path)].sum()
            if s > best:
                best, arg = s, path
    return best, arg


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("labels", [[1], [1, 2], [2, 2], [1, 2, 1]])
def test_forced_alignment_is_the_best_path_reading_the_labels(seed, labels):
    rng = np.random.default_rng(seed)
    T, C, blank = 5, 3, 0
    logp = log_softmax(rng.standard_normal((T, C)) * 2)
    path = ctc_align(logp, labels, blank)
    best, _ = _brute_best(logp, labels, blank)
    assert path is not None
    assert ctc_greedy(path, blank) == labels
    assert np.isclose(logp[np.arange(T), path].sum(), best)


def test_forced_alignment_with_a_nonzero_blank_and_too_short():
    rng = np.random.default_rng(1)
    logp = log_softmax(rng.standard_normal((4, 3)))
    path = ctc_align(logp, [0, 1], blank=2)
    assert ctc_greedy(path, 2) == [0, 1]
    assert np.isclose(logp[np.arange(4), path].sum(), _brute_best(logp, [0, 1], 2)[0])
    assert ctc_align(logp, [1, 1, 1], blank=2) is None  # repeats need blanks between them: 5 steps
    assert ctc_align(logp[:2], [0, 1, 0], blank=2) is None


# -- labels from exporters' metadata -------------------------------------------------------------------------------


def test_paddleocr_character_blank_first_space_last():
    meta = {"character": "a\nb\nc"}
    assert metadata_labels(meta, 5) == ["blank", "a", "b", "c", " "]
    assert metadata_labels(meta, 4) == ["blank", "a", "b", "c"]  # a model trained without the space
    assert metadata_labels(meta, None) == ["blank", "a", "b", "c", " "]  # PaddleOCR's default: use_space_char
    assert metadata_labels(meta, 7) is None
    # only "\n" separates: a vocabulary may hold other line-break characters; a trailing newline is no class
    assert metadata_labels({"character": "a\x0bb\n\u2028\n"}, None) == ["blank", "a\x0bb", "\u2028", " "]


def test_ultralytics_names_and_labels_lists():
    assert metadata_labels({"names": "{0: 'person', 1: 'bicycle', 2: 'car'}"}, 3) == ["person", "bicycle", "car"]
    assert metadata_labels({"names": "{0: 'person', 1: 'bicycle'}"}, 3) is None
    assert metadata_labels({"labels": "['cat', 'dog']"}, 2) == ["cat", "dog"]
    assert metadata_labels({"classes": "cat, dog"}, 2) == ["cat", "dog"]
    assert metadata_labels({"classes": "cat\ndog\n"}, None) == ["cat", "dog"]
    # a dict with keys that are not class indices, or a huge index, is no label source
    assert metadata_labels({"names": "{'a': 1}"}, None) is None
    assert metadata_labels({"names": "{300000000: 'x'}"}, None) is None
    assert heads.parse_names is metadata_labels


# -- targets --------------------------------------------------------------------------------------------------------


def test_parse_text_targets_strictly():
    assert parse_target("text") == Text()
    assert parse_target("text:12345") == Text("12345")
    assert parse_target("text: a b") == Text(" a b")
    assert parse_target("Text") == Class("Text")  # only the exact keyword; a label otherwise
    assert parse_target("class:text") == Class("text")
    with pytest.raises(InputError, match="wants the string"):
        parse_target("text:")
    with pytest.raises(InputError):
        Text("")
    with pytest.raises(InputError):
        Text(blank=-1)


def ctc_model(meta: dict[str, str] | None = None, T: int = 6, C: int = 4) -> Model:
    """logits [1, T, C] = 1 × x reshaped (x [1, 1, T, C]): the logits are the image."""
    g = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Mul", ["r", "one"], ["y"])], "ctc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, T, C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, C])],
        [numpy_helper.from_array(np.array([1, T, C], np.int64), "s"),
         numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    for k, v in (meta or {}).items():
        m.metadata_props.add(key=k, value=v)
    return m


def _logits(path: list[int], C: int = 4, high: float = 5.0, blank_high: float = 9.0) -> np.ndarray:
    """[1, T, C]: each step's top class from ``path``; blank steps (class 0) the most confident."""
    z = np.zeros((1, len(path), C), np.float32)
    for t, c in enumerate(path):
        z[0, t, c] = blank_high if c == 0 else high + 0.1 * t
    return z


def test_paddle_metadata_makes_a_ctc_head_and_the_default_step_skips_the_blank():
    m = Model(ctc_model({"character": "a\nb"}))
    assert m.head.kind == "sequence" and heads.ctc_blank(m) == 0
    assert m.labels == ["blank", "a", "b", " "]
    assert heads.kind_summary(m.head, m) == "sequence (CTC, blank 0)"
    z = _logits([0, 1, 0, 2, 2, 0])
    r = m.resolve_target(z)
    assert r.step == 4 and r.index == 2 and r.label == "b"  # the most confident non-blank step
    r = m.resolve_target(z, "a")  # a class named: the step where it is most probable
    assert r.step == 1 and r.index == 1
    plain = Model(ctc_model())  # no blank known: the most confident step, blank or not
    assert heads.ctc_blank(plain) is None and plain.resolve_target(z).step in (0, 2, 5)


def test_blank_from_head_override_and_metadata():
    assert heads.ctc_blank(Model(ctc_model(), head="ctc:3")) == 3
    assert heads.ctc_blank(Model(ctc_model(), head="ctc")) == 0
    assert heads.ctc_blank(Model(ctc_model(), labels_file=["a", "blank", "b", "c"], head="ctc")) == 1
    assert heads.ctc_blank(Model(ctc_model({"onnxfix.ctc_blank": "2"}))) == 2
    with pytest.raises(InputError, match="blank 9"):
        heads.ctc_blank(Model(ctc_model(), head="ctc:9"))
    with pytest.raises(InputError, match="not a class index"):
        heads.ctc_blank(Model(ctc_model({"onnxfix.ctc_blank": "x"})))
    with pytest.raises(InputError, match="ctc:BLANK"):
        Model(ctc_model(), head="ctc:x")


def test_text_target_sums_the_greedy_path():
    m = Model(ctc_model({"character": "a\nb"}))
    z = _logits([0, 1, 1, 0, 2, 1])
    r = m.resolve_target(z, "text")
    assert r.label == "aba" and r.kind == "text" and r.step == 1 and r.index == 1
    steps = [1, 2, 4, 5]
    classes = [1, 1, 2, 1]
    assert np.isclose(r.logit, z[0, steps, classes].sum())
    want = np.zeros_like(z)
    want[0, steps, classes] = 1
    np.testing.assert_array_equal(r.weights, want)
    # the per-step targets at its steps add up to it
    assert np.isclose(sum(m.resolve_target(z, Step(t, c)).logit for t, c in zip(steps, classes, strict=True)),
                      r.logit)
    # another string: aligned by Viterbi; a string the labels cannot spell, or too long, is refused
    r2 = m.resolve_target(z, "text:ab")
    assert r2.label == "ab" and ctc_greedy(np.argwhere(r2.weights[0])[:, 1], 0) == [1, 2]
    with pytest.raises(InputError, match="not a class label"):
        m.resolve_target(z, "text:az")
    with pytest.raises(InputError, match="cannot be read"):
        m.resolve_target(z, "text:aaaa")
    with pytest.raises(InputError, match="reads no text"):
        m.resolve_target(_logits([0] * 6), "text")


def test_text_target_needs_a_ctc_output():
    with pytest.raises(InputError, match="ctc:BLANK"):
        Model(ctc_model()).resolve_target(_logits([0, 1, 0, 2, 0, 0]), "text")
    # an explicit blank works without metadata
    m = Model(ctc_model(), labels_file=["-", "x", "y", "z"])
    assert m.resolve_target(_logits([0, 1, 0, 2, 0, 0]), Text(blank=0)).label == "xy"

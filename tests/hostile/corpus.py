"""The hostile-input corpus: generated cases, each with its expected outcome.

A :class:`Case` knows how to write its files into an empty folder and returns the CLI arguments to run there;
``code`` is the exit code it must give and ``message`` substrings the one-line error must contain (for
``code == 0``: a sane output PNG, plus the case's own ``check``). Nothing is stored in the repository: every file
is generated at test time into a temporary folder by :func:`cases`.

Categories: ``model`` (corrupt or unusual ONNX files), ``external`` (external-data paths and sizes), ``dtype``
(input/weight element types, NaN/Inf weights), ``shape`` (dynamic dims, several inputs/outputs), ``opset``,
``engine`` (ops with a rule in one engine only), ``image`` (unusual but valid images), ``image-bad`` (broken
images), ``cli`` (output folder, names, flags), ``fuzz`` (inputs the fuzzer found; see tests/test_fuzz.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto
from PIL import Image

from tests.hostile import images as I
from tests.hostile import models as M

#: Highest default-domain opset the corpus builds models for (ONNX Runtime's newest; onnx may know newer ones).
NEWEST_OPSET = 23


@dataclass
class Case:
    id: str
    category: str
    build: Callable[[Path], list[str]]
    code: int
    message: tuple[str, ...] = ()
    check: Callable[[Path, list[str], str], None] | None = None
    tags: set[str] = field(default_factory=set)

    @property
    def outcome(self) -> str:
        return "ok" if self.code == 0 else f"exit {self.code}"


def _photo(folder: Path, name: str = "photo.png") -> Path:
    p = folder / name
    Image.fromarray(I.pixels()).save(p)
    return p


def _save(folder: Path, m: onnx.ModelProto, name: str = "model.onnx") -> Path:
    p = folder / name
    p.write_bytes(m.SerializeToString())
    return p


def model_case(cid: str, category: str, make: Callable[[], onnx.ModelProto | bytes], code: int,
               *message: str, args: tuple[str, ...] = (), check=None) -> Case:
    def build(folder: Path) -> list[str]:
        m = make()
        p = folder / "model.onnx"
        p.write_bytes(m if isinstance(m, bytes) else m.SerializeToString())
        return [str(p), str(_photo(folder)), "--out", str(folder / "out"), *args]

    return Case(cid, category, build, code, tuple(message), check)


def image_case(cid: str, category: str, name: str, data: bytes | Callable[[], bytes], code: int, *message: str,
               args: tuple[str, ...] = (), check=None) -> Case:
    def build(folder: Path) -> list[str]:
        p = _save(folder, M.cnn())
        img = I.write(folder, name, data() if callable(data) else data)
        return [str(p), str(img), "--out", str(folder / "out"), *args]

    return Case(cid, category, build, code, tuple(message), check)


# -- checks for cases that must work --------------------------------------------------------------------------


def _outputs(folder: Path) -> list[Path]:
    return sorted((folder / "out").glob("*.png"))


def _size_is(w: int, h: int):
    def check(folder: Path, argv: list[str], stdout: str) -> None:
        (png,) = _outputs(folder)
        assert Image.open(png).size == (w, h), (Image.open(png).size, (w, h))

    return check


def _first_frame(folder: Path, argv: list[str], stdout: str) -> None:
    from onnxfix.io.image import decode_image

    src = Path(argv[1])
    with Image.open(src) as im:
        im.seek(0)
        want = np.asarray(im.convert("RGB"))
        im.seek(1)
        second = np.asarray(im.convert("RGB"))
    got = np.asarray(decode_image(src))
    assert not np.array_equal(want, second), "the frames must differ for this check to mean anything"
    assert np.array_equal(got, want), "decode_image must return the first frame"


def _exif(orientation: int):
    # orientations 5..8 swap the axes; the picture is drawn on the upright image
    w, h = (20, 30) if orientation >= 5 else (30, 20)

    def check(folder: Path, argv: list[str], stdout: str) -> None:
        _size_is(w, h)(folder, argv, stdout)
        from PIL import ImageOps

        from onnxfix.io.image import decode_image

        with Image.open(argv[1]) as im:
            want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        assert np.array_equal(np.asarray(decode_image(argv[1])), want)

    return check


def _same_top_class(folder: Path, argv: list[str], stdout: str) -> None:
    """The printed top class equals the opset-17 reference on the same weights and image (via the Python API)."""
    import re

    from onnxfix import Explainer

    ref = Explainer(M.cnn()).predict(argv[1], k=1)[0]["index"]
    got = re.search(r"\*1\..*\(class (\d+),", stdout)
    assert got and int(got.group(1)) == ref, (stdout, ref)


def _names(*expected: str, untouched: tuple[str, ...] = ()):
    def check(folder: Path, argv: list[str], stdout: str) -> None:
        got = sorted(p.name for p in _outputs(folder))
        assert got == sorted(expected), got
        for name in expected:
            if name not in untouched:
                assert name in stdout, (name, stdout)
        for name in untouched:
            assert (folder / "out" / name).read_bytes() == b"OLD", name

    return check


# -- the corpus -----------------------------------------------------------------------------------------------


def _model_cases() -> list[Case]:
    cs: list[Case] = []
    cs.append(model_case("model-empty", "model", lambda: b"", 2, "model.onnx", "empty"))
    data = M.cnn().SerializeToString()
    n = len(data)
    # 40 truncation points spread over the whole file, plus the first few bytes
    cuts = sorted({1, 2, 3, 5, 8, 13} | {int(n * k / 40) for k in range(1, 40)})
    for c in cuts:
        cs.append(model_case(f"model-truncated-{c:05d}", "model", lambda c=c: data[:c], 2, "model.onnx",
                             "not an ONNX model"))
    for seed in range(16):
        length = [1, 7, 64, 1000, 4096, 65536][seed % 6]

        def rnd(seed=seed, length=length) -> bytes:
            return np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()

        cs.append(model_case(f"model-random-{seed:02d}-{length}b", "model", rnd, 2, "model.onnx",
                             "not an ONNX model"))
    cs.append(model_case("model-text", "model", lambda: b"ir_version: 8\ngraph { }\n" * 50, 2, "not an ONNX model"))
    cs.append(model_case("model-zeros", "model", lambda: b"\0" * 4096, 2, "not an ONNX model"))
    cs.append(model_case("model-png-bytes", "model", lambda: I.variants()["plain.png"], 2, "not an ONNX model"))
    for name, blob in M.not_a_model_protos().items():
        why = {"model_without_inputs": "no inputs", "model_without_outputs": "no outputs"}.get(name,
                                                                                          "not an ONNX model")
        cs.append(model_case(f"model-proto-{name}", "model", lambda blob=blob: blob, 2, why))
    cs.append(model_case("model-cycle", "model", M.with_cycle, 2, "cycle"))
    cs.append(model_case("model-dangling-input", "model", M.with_dangling_input, 2, "ghost_tensor", "nothing produces"))
    cs.append(model_case("model-duplicate-tensor", "model", M.with_duplicate_output, 2, "'c1'", "produced twice"))
    cs.append(model_case("model-output-shadows-weight", "model", M.with_output_shadowing_initializer, 2,
                         "'w'", "produced twice"))
    for t in ("w", "b", "fw"):
        cs.append(model_case(f"model-missing-initializer-{t}", "model", lambda t=t: M.without_initializer(t), 2,
                             f"'{t}'", "nothing produces"))
    for t, keep in (("w", 0), ("w", 17), ("fw", 100), ("b", 15)):
        cs.append(model_case(f"model-short-initializer-{t}-{keep}", "model",
                             lambda t=t, keep=keep: M.with_short_initializer(t, keep), 2, f"{t!r}", "bytes"))
    # a weight whose shape contradicts the graph: ORT refuses the model at load time (exit 3) when its shape
    # inference sees it, else the first run fails naming the node (exit 2)
    for t, dims, code, msg in (("w", [4, 2, 3, 3], 2, "Conv"), ("w", [4, 3, 5, 5], 2, "Conv"), ("b", [3], 2, "Conv"),
                               ("fw", [5, 63], 3, "Gemm")):
        cs.append(model_case(f"model-wrong-dims-{t}-{'x'.join(map(str, dims))}", "model",
                             lambda t=t, dims=dims: M.with_wrong_dims(t, dims), code, "ONNX Runtime", msg))
    cs.append(model_case("model-huge-declared-initializer", "model", lambda: M.with_huge_declared_dims("w"), 2,
                         "'w'", "bytes"))
    cs.append(model_case("model-unknown-domain", "model", lambda: M.cnn(extra=("Weird", "custom.domain")), 3,
                         "Weird"))
    cs.append(model_case("model-unknown-op", "model", lambda: M.cnn(extra=("NoSuchOp", "")), 3, "NoSuchOp"))
    cs.append(model_case("model-ml-domain-op", "model", lambda: M.cnn(extra=("Normalizer", "ai.onnx.ml")), 3,
                         "Normalizer"))
    return cs


def _flat(expected: tuple[int, tuple[str, ...]]) -> tuple:
    return (expected[0], *expected[1])


def _engine_cases() -> list[Case]:
    cs: list[Case] = []
    # ops with a rule in one engine only (DESIGN §3: the other engine works); an engine that gained the rule since
    # the corpus was written must then explain the model (exit 0), one without it must refuse naming the op
    from onnxfix.autodiff import VJP_RULES
    from onnxfix.fixations import RULES

    def expect(op: str, rules, other: str) -> tuple[int, tuple[str, ...]]:
        return (0, ()) if op in rules else (3, (op, other))

    for op in ("Abs", "Elu", "Softplus"):
        cs.append(model_case(f"engine-{op}-fixations", "engine", lambda op=op: M.cnn(extra=(op, "")),
                             *_flat(expect(op, RULES, "saliency"))))
        cs.append(model_case(f"engine-{op}-saliency", "engine", lambda op=op: M.cnn(extra=(op, "")),
                             *_flat(expect(op, VJP_RULES, "fixations")), args=("--method", "saliency")))
    for op in ("Sqrt", "Log"):
        # after a Sigmoid, so the values stay positive and the gradient finite
        chain = [("Sigmoid", ""), (op, "")]
        cs.append(model_case(f"engine-{op}-fixations", "engine", lambda chain=chain: M.cnn(extra=chain),
                             *_flat(expect(op, RULES, "saliency"))))
        cs.append(model_case(f"engine-{op}-saliency", "engine", lambda chain=chain: M.cnn(extra=chain),
                             *_flat(expect(op, VJP_RULES, "fixations")), args=("--method", "saliency")))
    # straight after the Relu: sqrt'(0) = inf and log(0) = -inf — refused, never drawn
    cs.append(model_case("engine-Sqrt-of-zero-saliency", "engine", lambda: M.cnn(extra=("Sqrt", "")), 2,
                         "gradient", "NaN or Inf", args=("--method", "saliency")))
    cs.append(model_case("engine-Log-of-zero-saliency", "engine", lambda: M.cnn(extra=("Log", "")), 2,
                         "NaN or Inf scores", args=("--method", "saliency")))
    lrn = ("LRN", "", {"size": 3})
    cs.append(model_case("engine-LRN-fixations", "engine", lambda: M.cnn(extra=lrn), 3, "LRN", "odd_node"))
    cs.append(model_case("engine-LRN-saliency", "engine", lambda: M.cnn(extra=lrn), 3, "LRN", "odd_node",
                         args=("--method", "saliency")))
    cs.append(model_case("engine-LRN-occlusion", "engine", lambda: M.cnn(extra=lrn), 0,
                         args=("--method", "occlusion")))
    cs.append(model_case("engine-LRN-missing-attribute", "engine", lambda: M.cnn(extra=("LRN", "")), 3,
                         "odd_node (LRN) lacks required attribute", "size", args=("--method", "occlusion")))
    cs.append(model_case("engine-all-methods", "engine", lambda: M.cnn(head="gap"), 0, args=("--method", "all")))
    return cs


def _opset_cases() -> list[Case]:
    cs = []
    for v in range(7, NEWEST_OPSET + 1):
        cs.append(model_case(f"opset-{v:02d}-fixations", "opset", lambda v=v: M.cnn(opset=v), 0,
                             check=_same_top_class))
        if v in (7, 11, 13, NEWEST_OPSET):
            cs.append(model_case(f"opset-{v:02d}-gradcam", "opset", lambda v=v: M.cnn(opset=v), 0,
                                 args=("--method", "gradcam"), check=_same_top_class))
    return cs


def _shape_cases() -> list[Case]:
    cs = []
    for shape, head in ((("N", 3, 8, 8), "pool"), (("N", 3, "H", "W"), "gap"), ((1, 3, "H", "W"), "gap"),
                        (("batch", 3, 32, 32), "gap"), ((1, 3, 1, 1), "gap"), ((1, 3, 300, 2), "gap")):
        tag = "x".join(map(str, shape))
        for method in ("fixations", "saliency", "occlusion"):
            # every engine takes a dynamic spatial size (the autodiff engine builds its program for the input's
            # size since issue #10; it used to refuse with exit 3)
            code, msg = 0, ()
            if method == "occlusion" and shape[2:] == (1, 1):
                code, msg = 2, ("larger than the input",)
            cs.append(model_case(f"shape-dynamic-{tag}-{method}", "shape",
                                 lambda shape=shape, head=head: M.cnn(shape=shape, head=head), code, *msg,
                                 args=("--method", method)))
    cs.append(model_case("shape-dynamic-size-flag", "shape", lambda: M.cnn(shape=(1, 3, "H", "W"), head="gap"), 0,
                         args=("--size", "16", "24")))
    cs.append(model_case("shape-two-inputs", "shape", lambda: M.cnn(second_input=True), 3, "2 inputs", "scale"))
    cs.append(model_case("shape-two-outputs", "shape", lambda: M.cnn(outputs=2), 0))
    def input_echoed_first() -> onnx.ModelProto:
        m = M.cnn()
        echo = onnx.ValueInfoProto()
        echo.CopyFrom(m.graph.input[0])
        m.graph.output.insert(0, echo)
        return m

    # an output that echoes the input is skipped when choosing what to explain
    cs.append(model_case("shape-first-output-is-the-input", "shape", input_echoed_first, 0, check=_same_top_class))
    cs.append(model_case("shape-two-outputs-pick", "shape", lambda: M.cnn(outputs=2), 0, args=("--output", "prob")))
    cs.append(model_case("shape-output-missing", "shape", lambda: M.cnn(outputs=2), 2, "no output", "nope",
                         args=("--output", "nope")))
    cs.append(model_case("shape-rank3-input", "shape", lambda: M.cnn(shape=(3, 8, 8)), 2, "4-D"))
    cs.append(model_case("shape-no-channel-axis", "shape", lambda: M.cnn(shape=(1, 5, 8, 9), head="gap"), 2,
                         "channel"))
    cs.append(model_case("shape-no-output-softmax", "shape", lambda: M.cnn(softmax=False), 0))
    return cs


def _dtype_cases() -> list[Case]:
    cs = []
    # float inputs take the normalised image in their own precision; uint8 takes raw pixels 0..255; other integer
    # inputs would need the model's quantisation parameters and are refused, naming the type
    # inputs would need the model's quantisation parameters and are refused, naming the type; gradients of a uint8
    # input do not exist (refused, exit 2)
    for elem, tag, code, msg in ((TensorProto.UINT8, "uint8", 0, ()), (TensorProto.DOUBLE, "double", 0, ()),
                                 (TensorProto.FLOAT16, "float16", 0, ()), (TensorProto.INT8, "int8", 3, ("int8",)),
                                 (TensorProto.INT32, "int32", 3, ("int32",))):
        for method in ("fixations", "saliency"):
            c, m = (2, ("uint8", "floating-point")) if (tag, method) == ("uint8", "saliency") else (code, msg)
            cs.append(model_case(f"dtype-input-{tag}-cast-{method}", "dtype", lambda e=elem: M.cnn(input_elem=e),
                                 c, *m, args=("--method", method)))
    cs.append(model_case("dtype-float16-net", "dtype", lambda: M.cnn(elem=TensorProto.FLOAT16), 0))
    # ORT's CPU kernels lack float16 ScatterElements, which the backward graph uses: a clean run-time refusal
    cs.append(model_case("dtype-float16-net-saliency", "dtype", lambda: M.cnn(elem=TensorProto.FLOAT16), 2,
                         "ScatterElements", args=("--method", "saliency")))
    cs.append(model_case("dtype-float16-net-occlusion", "dtype", lambda: M.cnn(elem=TensorProto.FLOAT16), 0,
                         args=("--method", "occlusion")))
    cs.append(model_case("dtype-double-net", "dtype", lambda: M.cnn(elem=TensorProto.DOUBLE), 3,
                         "ONNX Runtime cannot load"))
    for v, tag in ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf"), (3e38, "overflow")):
        for t in ("fw", "w"):
            cs.append(model_case(f"dtype-weights-{tag}-{t}", "dtype", lambda v=v, t=t: M.with_weights(v, t), 2,
                                 "NaN or Inf"))
    return cs


def _external_cases() -> list[Case]:
    cs = []
    good = M.fw_bytes()

    def ext(cid: str, location: str, code: int, *message: str, setup=None, length=None, offset=0, sub="m") -> Case:
        def build(folder: Path) -> list[str]:
            d = folder / sub
            d.mkdir(parents=True, exist_ok=True)
            (folder / "secret.bin").write_bytes(good)
            if setup:
                setup(folder, d)
            loc = str(folder / "secret.bin") if location == "{abs}" else location
            p = _save(d, M.with_external(loc, length=length, offset=offset))
            return [str(p), str(_photo(folder)), "--out", str(folder / "out")]

        return Case(cid, "external", build, code, tuple(message))

    def put(name: str, data: bytes = good):
        return lambda folder, d: (d / name).parent.mkdir(parents=True, exist_ok=True) or (d / name).write_bytes(data)

    cs.append(ext("external-inside", "weights.bin", 0, setup=put("weights.bin")))
    cs.append(ext("external-inside-subfolder", "data/weights.bin", 0, setup=put("data/weights.bin")))
    cs.append(ext("external-offset", "weights.bin", 0, setup=put("weights.bin", b"\0" * 64 + good), offset=64))
    cs.append(ext("external-absolute", "/etc/passwd", 2, "absolute", "refused"))
    cs.append(ext("external-absolute-secret", "{abs}", 2, "absolute", "refused"))
    cs.append(ext("external-windows-drive", "C:\\weights.bin", 2, "refused"))
    cs.append(ext("external-unc", "\\\\server\\share\\w.bin", 2, "refused"))
    cs.append(ext("external-dotdot", "../secret.bin", 2, "leaves the model's folder", "refused"))
    cs.append(ext("external-dotdot-deep", "a/b/../../../secret.bin", 2, "refused"))
    cs.append(ext("external-dotdot-backslash", "..\\secret.bin", 2, "refused"))
    cs.append(ext("external-missing", "absent.bin", 2, "missing"))
    cs.append(ext("external-empty-location", "", 2, "without a location"))
    cs.append(ext("external-nul-byte", "weights.bin\0.txt", 2, "refused", setup=put("weights.bin")))
    cs.append(ext("external-directory", "data", 2, "missing",
                  setup=lambda folder, d: (d / "data").mkdir()))
    cs.append(ext("external-symlink-out", "link.bin", 2, "refused",
                  setup=lambda folder, d: os.symlink(folder / "secret.bin", d / "link.bin")))
    cs.append(ext("external-symlinked-dir-out", "ln/secret.bin", 2, "refused",
                  setup=lambda folder, d: os.symlink(folder, d / "ln")))
    cs.append(ext("external-symlink-inside", "link.bin", 2, "symbolic link",
                  setup=lambda folder, d: (put("real.bin")(folder, d), os.symlink(d / "real.bin", d / "link.bin"))))
    cs.append(ext("external-dangling-symlink", "link.bin", 2, "missing",
                  setup=lambda folder, d: os.symlink(d / "nowhere.bin", d / "link.bin")))
    cs.append(ext("external-length-3GB", "weights.bin", 2, "weights.bin", "bytes", setup=put("weights.bin"),
                  length=3 * 1024**3))
    cs.append(ext("external-length-short", "weights.bin", 2, "'fw'", "1280 bytes", setup=put("weights.bin"),
                  length=16))
    cs.append(ext("external-offset-past-end", "weights.bin", 2, "weights.bin", "bytes", setup=put("weights.bin"),
                  offset=10**6))
    cs.append(ext("external-file-too-small", "weights.bin", 2, "weights.bin", "bytes",
                  setup=put("weights.bin", good[:100])))
    cs.append(ext("external-length-negative", "weights.bin", 2, "weights.bin", setup=put("weights.bin"),
                  length=-5))
    return cs


def _image_cases() -> list[Case]:
    cs = []
    sizes = {"one_pixel.png": (1, 1), "one_row.png": (30, 1), "one_column.png": (1, 20), "tall.png": (2, 800)}
    for name, data in I.variants().items():
        if name.startswith("exif_orientation_"):
            check = _exif(int(name.split("_")[-1].split(".")[0]))
        else:
            check = _size_is(*sizes.get(name, (30, 20)))
        cs.append(image_case(f"image-{name}", "image", name, data, 0, check=check))
    a, b = I.pixels(seed=3), I.pixels(seed=4)
    cs.append(image_case("image-animated.gif", "image", "animated.gif", I.animated_gif([a, b, a]), 0,
                         check=_first_frame))
    for name, (data, msg) in I.broken().items():
        cs.append(image_case(f"image-bad-{name}", "image-bad", name, data, 2, name, msg))
    return cs


def _cli_cases() -> list[Case]:
    cs = []

    def cli(cid: str, code: int, *message: str, argv: Callable[[Path, Path, Path], list[str]], check=None) -> Case:
        def build(folder: Path) -> list[str]:
            return argv(folder, _save(folder, M.cnn()), _photo(folder))

        return Case(cid, "cli", build, code, tuple(message), check)

    def out_is_file(folder, m, img):
        (folder / "blocker").write_text("x")
        return [str(m), str(img), "--out", str(folder / "blocker")]

    def out_under_file(folder, m, img):
        (folder / "blocker").write_text("x")
        return [str(m), str(img), "--out", str(folder / "blocker" / "sub")]

    cs.append(cli("cli-out-is-a-file", 2, "cannot write", argv=out_is_file))
    cs.append(cli("cli-out-on-proc", 2, "cannot write",
                  argv=lambda f, m, i: [str(m), str(i), "--out", "/proc/onnxfix-hostile-out"]))
    cs.append(cli("cli-out-under-a-file", 2, "cannot write", argv=out_under_file))

    def existing(folder, m, img, *extra):
        (folder / "out").mkdir()
        (folder / "out" / "photo.fixations.png").write_bytes(b"OLD")
        (folder / "out" / "photo-2.fixations.png").write_bytes(b"OLD")
        return [str(m), str(img), "--out", str(folder / "out"), *extra]

    cs.append(cli("cli-existing-output-kept", 0, argv=existing,
                  check=_names("photo.fixations.png", "photo-2.fixations.png", "photo-3.fixations.png",
                               untouched=("photo.fixations.png", "photo-2.fixations.png"))))

    def overwrite_check(folder, argv, stdout):
        png = folder / "out" / "photo.fixations.png"
        assert Image.open(png).size == (30, 20)
        assert (folder / "out" / "photo-2.fixations.png").read_bytes() == b"OLD"
        assert not (folder / "out" / "photo-3.fixations.png").exists()

    cs.append(cli("cli-existing-output-overwrite", 0, argv=lambda f, m, i: existing(f, m, i, "--overwrite"),
                  check=overwrite_check))

    def same_stem(folder, m, img):
        (folder / "a").mkdir()
        (folder / "b").mkdir()
        _photo(folder / "a", "x.png")
        _photo(folder / "b", "x.jpg")
        return [str(m), str(folder / "a" / "x.png"), str(folder / "b" / "x.jpg"), "--out", str(folder / "out")]

    cs.append(cli("cli-same-stem-two-images", 0, argv=same_stem, check=_names("x.fixations.png", "x-2.fixations.png")))
    cs.append(cli("cli-same-image-twice", 0, argv=lambda f, m, i: [str(m), str(i), str(i), "--out", str(f / "out")],
                  check=_names("photo.fixations.png", "photo-2.fixations.png")))

    def input_is_output(folder, m, img):
        (folder / "out").mkdir()
        p = folder / "out" / "photo.fixations.png"
        Image.fromarray(I.pixels()).save(p)
        return [str(m), str(p), "--out", str(folder / "out"), "--overwrite"]

    def input_kept(folder, argv, stdout):
        # the input x.fixations.png explains to x.fixations.fixations.png: inputs are never replaced
        assert Image.open(folder / "out" / "photo.fixations.png").size == (30, 20)

    cs.append(cli("cli-output-next-to-input", 0, argv=input_is_output, check=input_kept))

    def output_is_input(folder, m, img, *extra):
        # the first image's output name, out/photo.fixations.png, is the second image
        (folder / "out").mkdir()
        second = folder / "out" / "photo.fixations.png"
        Image.fromarray(I.pixels(seed=7)).save(second)
        return [str(m), str(img), str(second), "--out", str(folder / "out"), *extra]

    def inputs_kept(folder, argv, stdout):
        _names("photo.fixations.png", "photo-2.fixations.png", "photo.fixations.fixations.png")(folder, argv, stdout)
        assert np.array_equal(np.asarray(Image.open(folder / "out" / "photo.fixations.png")), I.pixels(seed=7))

    cs.append(cli("cli-output-would-be-an-input", 0, argv=output_is_input, check=inputs_kept))
    cs.append(cli("cli-overwrite-never-replaces-an-input", 2, "refusing to overwrite an input",
                  argv=lambda f, m, i: output_is_input(f, m, i, "--overwrite")))
    cs.append(cli("cli-unknown-method", 2, "unknown method", "nosuch",
                  argv=lambda f, m, i: [str(m), str(i), "--method", "nosuch", "--out", str(f / "out")]))
    cs.append(cli("cli-target-out-of-range", 2, "out of range",
                  argv=lambda f, m, i: [str(m), str(i), "--target", "9", "--out", str(f / "out")]))
    cs.append(cli("cli-target-negative", 2, "out of range",
                  argv=lambda f, m, i: [str(m), str(i), "--target", "-1", "--out", str(f / "out")]))
    cs.append(cli("cli-target-unknown-label", 2, "zebra",
                  argv=lambda f, m, i: [str(m), str(i), "--target", "zebra", "--out", str(f / "out")]))
    cs.append(cli("cli-layer-unknown", 2, "nolayer",
                  argv=lambda f, m, i: [str(m), str(i), "--method", "gradcam", "--layer", "nolayer",
                                        "--out", str(f / "out")]))
    cs.append(cli("cli-size-zero", 2, "--size",
                  argv=lambda f, m, i: [str(m), str(i), "--size", "0", "0", "--out", str(f / "out")]))
    cs.append(cli("cli-top-k-zero", 0,
                  argv=lambda f, m, i: [str(m), str(i), "--top-k", "0", "--out", str(f / "out")]))
    cs.append(cli("cli-std-zero", 2, "--std",
                  argv=lambda f, m, i: [str(m), str(i), "--std", "0", "1", "1", "--out", str(f / "out")]))
    cs.append(cli("cli-model-is-directory", 2, "not a regular file",
                  argv=lambda f, m, i: [str(f), str(i), "--out", str(f / "out")]))
    def image_folder_without_images(folder, m, img):
        (folder / "empty").mkdir()
        (folder / "empty" / "notes.txt").write_text("x")
        return [str(m), str(folder / "empty"), "--out", str(folder / "out")]

    # a folder is an input since issue #10 (walked for image files); one without any is refused
    cs.append(cli("cli-image-is-directory", 2, "holds no image files", argv=image_folder_without_images))
    cs.append(cli("cli-image-missing", 2, "ghost.png", "no such",
                  argv=lambda f, m, i: [str(m), str(f / "ghost.png"), "--out", str(f / "out")]))
    cs.append(cli("cli-labels-missing", 2, "nolabels.txt",
                  argv=lambda f, m, i: [str(m), str(i), "--labels", str(f / "nolabels.txt"), "--out", str(f / "out")]))
    cs.append(cli("cli-max-image-pixels-low", 2, "--max-image-pixels",
                  argv=lambda f, m, i: [str(m), str(i), "--max-image-pixels", "100", "--out", str(f / "out")]))
    cs.append(cli("cli-max-image-pixels-enough", 0,
                  argv=lambda f, m, i: [str(m), str(i), "--max-image-pixels", "600", "--out", str(f / "out")]))
    cs.append(cli("cli-max-model-mb-low", 2, "--max-model-mb",
                  argv=lambda f, m, i: [str(m), str(i), "--max-model-mb", "0.0001", "--out", str(f / "out")]))
    cs.append(cli("cli-memory-budget-low", 2, "--memory-budget-mb",
                  argv=lambda f, m, i: [str(m), str(i), "--memory-budget-mb", "0.0001", "--out", str(f / "out")]))

    def bomb_raised(folder, m, img):
        p = I.write(folder, "bomb.png", I.png_header_only(40_000, 40_000))
        return [str(m), str(p), "--max-image-pixels", "2000000000", "--out", str(folder / "out")]

    # limit raised: the header passes, the (absent) pixel data then fails to decode — still a clean exit 2
    cs.append(cli("cli-max-image-pixels-raised-bomb", 2, "bomb.png", "cannot decode", argv=bomb_raised))
    cs.append(cli("cli-inspect-broken", 2, "not an ONNX model",
                  argv=lambda f, m, i: ["inspect", str(I.write(f, "x.onnx", b"garbage"))]))
    cs.append(cli("cli-inspect-two-inputs", 3, "inputs",
                  argv=lambda f, m, i: ["inspect", str(_save(f, M.cnn(second_input=True), "two.onnx"))]))
    return cs


def _maxpool_attribute_renamed() -> onnx.ModelProto:
    m = M.cnn()
    a = next(a for a in M.node(m, "pool1").attribute if a.name == "kernel_shape")
    a.name = "kernel_shape@\x02"  # what the fuzzer's byte mutation did
    return m


def _fuzz_cases() -> list[Case]:
    # what tests/test_fuzz.py found; each was a crash, a traceback or stray stderr output before its fix
    cs = [image_case(f"fuzz-{name}", "fuzz", name, data, 2, name, "cannot decode")
          for name, data in I.fuzz_found().items()]
    for what, word in (("op type", b"Softmax"), ("tensor name", b"logits"), ("model metadata", b"onnxfix.labels")):
        def bad(word=word) -> bytes:  # one byte of a string field made invalid UTF-8 (was: TypeError, ORT stdout)
            data = M.cnn().SerializeToString()
            i = data.index(word)
            return data[:i] + b"\x80" + data[i + 1:]

        cs.append(model_case(f"fuzz-non-utf8-{what.replace(' ', '-')}", "fuzz", bad, 2, "not UTF-8"))
    # was: ORT ran the MaxPool without kernel_shape, the gradient builder crashed (TypeError)
    for method in ("fixations", "saliency"):
        cs.append(model_case(f"fuzz-maxpool-attribute-renamed-{method}", "fuzz", _maxpool_attribute_renamed, 3,
                             "pool1 (MaxPool)", "does not define", args=("--method", method)))
    def gather_with_conv_inputs() -> onnx.ModelProto:
        m = M.cnn()
        n = M.node(m, "conv1")
        n.op_type = "Gather"
        del n.attribute[:]
        return m

    # was: a Gather with three inputs ran in ORT and crashed the gradient builder (ValueError)
    cs.append(model_case("fuzz-gather-three-inputs", "fuzz", gather_with_conv_inputs, 3, "conv1 (Gather)",
                         "3 inputs", args=("--method", "saliency")))
    def conv_empty_pads() -> onnx.ModelProto:
        m = M.cnn()
        a = next(a for a in M.node(m, "conv1").attribute if a.name == "pads")
        del a.ints[:]
        return m

    # was: Conv with pads=[] ran in ORT and crashed the gradient builder (IndexError)
    cs.append(model_case("fuzz-conv-empty-pads", "fuzz", conv_empty_pads, 3, "conv1 (Conv)", "pads=[]",
                         args=("--method", "saliency")))
    def conv_pads_untyped() -> onnx.ModelProto:
        m = M.cnn()
        a = next(a for a in M.node(m, "conv1").attribute if a.name == "pads")
        a.type = onnx.AttributeProto.UNDEFINED
        return m

    # was: an attribute without its type → TypeError in graph.py's attribute normalisation
    cs.append(model_case("fuzz-conv-pads-untyped", "fuzz", conv_pads_untyped, 3, "conv1 (Conv)", "'pads'",
                         "UNDEFINED"))
    def output_is(name: str):
        def make() -> onnx.ModelProto:
            m = M.cnn()
            m.graph.output[0].name = name
            return m

        return make

    # was: the graph output renamed to a weight → occlusion indexed past the end (IndexError)
    for name, what in (("b", "a constant"), ("image", "a model input")):
        cs.append(model_case(f"fuzz-output-is-{name}", "fuzz", output_is(name), 3, f"output {name!r} is {what}",
                             args=("--method", "occlusion")))
    def softmax_of_input() -> onnx.ModelProto:
        m = M.cnn()
        M.node(m, "softmax").input[0] = "image"
        return m

    # was: the softmax rewired to read the image → the logits are the input → KeyError in explain
    cs.append(model_case("fuzz-softmax-of-the-input", "fuzz", softmax_of_input, 3, "output 'prob' is a model input"))
    def conv_reads_bias() -> onnx.ModelProto:
        m = M.cnn()
        M.node(m, "conv1").input[1] = "b"
        return m

    # was: Conv reading the 1-D bias as its weight ran in ORT and crashed the gradient builder (ValueError)
    cs.append(model_case("fuzz-conv-weight-rank-1", "fuzz", conv_reads_bias, 3, "conv1 (Conv)", "'b' of rank 1",
                         args=("--method", "saliency")))
    # was: a -1 batch dimension reached numpy (ValueError: negative dimensions); now it is symbolic, as in ORT
    for method in ("fixations", "saliency"):
        cs.append(model_case(f"fuzz-batch-minus-one-{method}", "fuzz", lambda: M.cnn(shape=(-1, 3, 8, 8)), 0,
                             args=("--method", method), check=_same_top_class))
    def conv_reads_weight() -> onnx.ModelProto:
        m = M.cnn(opset=7)
        M.node(m, "conv1").input[0] = "w"
        return m

    # was: no path from the image to the output (IR 3: nothing folded) → KeyError in explain
    cs.append(model_case("fuzz-output-independent-of-image", "fuzz", conv_reads_weight, 3,
                         "does not depend on the image input 'image'"))
    # was: an input declaring 2**31 rows went to PIL's resize (OverflowError)
    cs.append(model_case("fuzz-input-height-2^31", "fuzz", lambda: M.cnn(shape=(1, 3, 2**31, 8)), 2,
                         "2147483648×8", "--size"))
    return cs


def cases() -> list[Case]:
    """Every case of the corpus (cheap: files are written only by ``Case.build``)."""
    out = (_model_cases() + _engine_cases() + _opset_cases() + _shape_cases() + _dtype_cases() + _external_cases()
           + _image_cases() + _cli_cases() + _fuzz_cases())
    ids = [c.id for c in out]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return out


def summary(items: list[Case] | None = None) -> str:
    """A table of case counts by category and expected outcome (for docs/robustness.md and the issue)."""
    import collections

    items = cases() if items is None else items
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for c in items:
        table[c.category][c.outcome] += 1
    cols = ["ok", "exit 2", "exit 3"]
    lines = ["| category | " + " | ".join(cols) + " | total |", "|---|" + "---|" * (len(cols) + 1)]
    for cat in sorted(table):
        row = table[cat]
        lines.append(f"| {cat} | " + " | ".join(str(row[k]) for k in cols) + f" | {sum(row.values())} |")
    tot = collections.Counter(c.outcome for c in items)
    lines.append("| **all** | " + " | ".join(str(tot[k]) for k in cols) + f" | {len(items)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary())

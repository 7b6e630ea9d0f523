"""Safe ONNX model loading.

A model file comes from anywhere, so loading it must never read or write outside what the user pointed at:

* the file must exist, be a regular file, be non-empty and parse as a ``ModelProto`` with a graph;
* external-data locations must be relative paths that resolve (symlinks followed) inside the model's folder —
  absolute paths, ``..`` components and symlinks that leave the folder are refused before anything is read;
* nothing is ever written next to the model.

Every failure is an :class:`~onnxfix.errors.InputError` whose message names the file and the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from onnxfix.errors import InputError, UnsupportedModel

#: Models above this size (model file plus its external data) are refused unless the caller raises the limit:
#: ``--max-model-mb`` on the command line, ``Explainer(max_model_mb=...)`` or this module-level default
#: (2048 MB; a protobuf file alone cannot exceed 2 GiB, so bigger models come with external data).
MAX_MODEL_BYTES = 2 * 1024**3


def _external_location(tensor: onnx.TensorProto) -> str | None:
    for entry in tensor.external_data:
        if entry.key == "location":
            return entry.value
    return None


def check_external_data(model: onnx.ModelProto, folder: Path, label: str) -> list[Path]:
    """Refuse external-data locations that escape ``folder``; return the resolved files."""
    root = folder.resolve()
    files: list[Path] = []
    for tensor in external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = _external_location(tensor)
        if not loc:
            raise InputError(f"{label}: tensor {tensor.name!r} has external data without a location")
        if "\0" in loc:
            raise InputError(f"{label}: tensor {tensor.name!r} has an external-data location with a NUL byte; refused")
        pure = Path(loc)
        if pure.is_absolute() or loc.startswith(("/", "\\")) or ":" in pure.parts[0]:
            raise InputError(
                f"{label}: tensor {tensor.name!r} stores its data at absolute path {loc!r}; "
                "refused (external data must lie inside the model's folder)"
            )
        if ".." in Path(loc.replace("\\", "/")).parts:
            raise InputError(
                f"{label}: tensor {tensor.name!r} stores its data at {loc!r}, which leaves the model's folder; refused"
            )
        target = (root / loc).resolve()
        if root != target and root not in target.parents:
            raise InputError(
                f"{label}: tensor {tensor.name!r} stores its data at {loc!r}, which resolves to {target} "
                "outside the model's folder (symlink?); refused"
            )
        if not target.is_file():
            raise InputError(f"{label}: external data file {loc!r} for tensor {tensor.name!r} is missing")
        if (root / loc).is_symlink():
            raise InputError(f"{label}: external data file {loc!r} for tensor {tensor.name!r} is a symbolic link; "
                             "refused (onnx reads no linked data files)")
        _check_extent(tensor, loc, target.stat().st_size, label)
        files.append(target)
    return files


def _check_extent(tensor: onnx.TensorProto, loc: str, size: int, label: str) -> None:
    """Refuse an ``offset``/``length`` that is not a non-negative integer or reaches past the end of the file."""
    entries = {e.key: e.value for e in tensor.external_data}
    try:
        offset = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") else size - offset
    except ValueError:
        raise InputError(f"{label}: tensor {tensor.name!r} has a non-numeric external-data offset or length "
                         f"({entries.get('offset')!r}, {entries.get('length')!r})") from None
    if offset < 0 or length < 0:
        raise InputError(f"{label}: tensor {tensor.name!r} has a negative external-data offset or length "
                         f"({offset}, {length}) in {loc!r}")
    if offset + length > size:
        raise InputError(f"{label}: tensor {tensor.name!r} declares {length} bytes at offset {offset} of {loc!r}, "
                         f"but that file has {size} bytes")


def check_node_attributes(model: onnx.ModelProto, label: str) -> None:
    """Refuse (``UnsupportedModel``, exit 3, like a model ONNX Runtime cannot load) nodes of the standard domain
    that contradict the op's schema at the model's opset: an unknown attribute name or type, a missing required
    attribute, or a wrong number of inputs or outputs. Found by fuzzing: a MaxPool without ``kernel_shape``, a Gather
    with three inputs and a Conv whose ``pads`` had no type ran in ONNX Runtime (or reached it) and crashed later.
    Unknown ops and other domains are left to ONNX Runtime."""
    opsets = {o.domain or "": o.version for o in model.opset_import}
    version = opsets.get("", opsets.get("ai.onnx", 1))
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    for i, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, max(int(version), 1), "")
        except Exception:  # noqa: BLE001 - unknown op or opset: ONNX Runtime decides
            continue
        where = f"node {node.name or i} ({node.op_type})"
        have = {a.name for a in node.attribute}
        unknown = sorted(have - set(schema.attributes))
        if unknown:
            raise UnsupportedModel(f"{label}: invalid model: {where} has attribute(s) "
                                   f"{', '.join(map(repr, unknown))} that {node.op_type} (opset {version}) does "
                                   "not define")
        if not schema.min_input <= len(node.input) <= schema.max_input:
            raise UnsupportedModel(f"{label}: invalid model: {where} has {len(node.input)} inputs; "
                                   f"{node.op_type} takes {schema.min_input} to {schema.max_input}")
        if not schema.min_output <= len(node.output) <= schema.max_output:
            raise UnsupportedModel(f"{label}: invalid model: {where} has {len(node.output)} outputs; "
                                   f"{node.op_type} gives {schema.min_output} to {schema.max_output}")
        for a in node.attribute:
            want = int(schema.attributes[a.name].type)
            if int(a.type) != want:
                raise UnsupportedModel(f"{label}: invalid model: {where} has attribute {a.name!r} of type "
                                       f"{onnx.AttributeProto.AttributeType.Name(a.type)}; {node.op_type} wants "
                                       f"{onnx.AttributeProto.AttributeType.Name(want)}")
        missing = sorted(n for n, a in schema.attributes.items() if a.required and n not in have)
        if missing:
            raise UnsupportedModel(f"{label}: invalid model: {where} lacks required attribute(s) "
                                   f"{', '.join(missing)}")
        if "kernel_shape" in schema.attributes:
            _check_window(node, where, label)
        _check_weight_rank(node, inits, where, label)


def _check_weight_rank(node: onnx.NodeProto, inits: dict[str, list[int]], where: str, label: str) -> None:
    """The weight of a Conv/ConvTranspose has rank 2 + the window's, a Gemm's are matrices (found by fuzzing: a Conv
    reading a 1-D bias as its weight ran in ONNX Runtime and crashed the gradient builder)."""
    want: dict[int, int] = {}
    if node.op_type in ("Conv", "ConvTranspose"):
        ks = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
        want = {1: 2 + len(ks) if ks else -3}
    elif node.op_type == "Gemm":
        want = {0: 2, 1: 2}
    for i, rank in want.items():
        if i < len(node.input) and node.input[i] in inits:
            got = len(inits[node.input[i]])
            if (rank >= 0 and got != rank) or (rank < 0 and got < -rank):
                raise UnsupportedModel(f"{label}: invalid model: {where} reads {node.input[i]!r} of rank {got} as "
                                       f"input {i}; {node.op_type} needs rank {abs(rank)}{'+' if rank < 0 else ''}")


def _check_window(node: onnx.NodeProto, where: str, label: str) -> None:
    """Conv/pool window attributes agree in length: ``strides``/``dilations``/``kernel_shape`` n values, ``pads``
    2n (found by fuzzing: ``pads=[]`` ran in ONNX Runtime and crashed the gradient builder)."""
    ints = {a.name: list(a.ints) for a in node.attribute if a.name in ("kernel_shape", "strides", "dilations",
                                                                       "pads", "output_padding")}
    n = len(ints["kernel_shape"]) if "kernel_shape" in ints else None
    for name, v in ints.items():
        want = None if n is None else (2 * n if name == "pads" else n)
        if not v or (want is not None and len(v) != want) or (name == "pads" and len(v) % 2):
            raise UnsupportedModel(f"{label}: invalid model: {where} has {name}={v}, which does not fit its "
                                   f"{n or 'unknown'}-D window")


def _declared_bytes(tensor: onnx.TensorProto) -> tuple[int, int]:
    """(element count, bytes) that ``tensor``'s dims declare; bytes is -1 for strings and unknown types."""
    count = 1
    for d in tensor.dims:
        count *= int(d)
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return count, -1
    if tensor.data_type == onnx.TensorProto.STRING:
        return count, -1
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return count, (count + 1) // 2
    return count, count * itemsize


def check_tensors(model: onnx.ModelProto, label: str, max_bytes: int | None = None) -> None:
    """Refuse tensors (initializers, Constant values) whose data does not match their declared shape, or whose
    declared size is above ``max_bytes`` — before anything allocates them."""
    from onnx import numpy_helper

    max_bytes = MAX_MODEL_BYTES if max_bytes is None else max_bytes
    for t in external_data_helper._get_all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        dims = list(t.dims)
        if any(d < 0 for d in dims):
            raise InputError(f"{label}: tensor {t.name!r} has a negative dimension {dims}")
        count, nbytes = _declared_bytes(t)
        if nbytes > max_bytes:
            raise InputError(f"{label}: tensor {t.name!r} declares shape {dims} = {nbytes} bytes, above the limit "
                             f"of {max_bytes} bytes (--max-model-mb)")
        if t.raw_data and nbytes >= 0:
            if len(t.raw_data) != nbytes:
                raise InputError(f"{label}: tensor {t.name!r} has {len(t.raw_data)} bytes of data but its shape "
                                 f"{dims} needs {nbytes} bytes (truncated or corrupt weights)")
            continue
        try:
            numpy_helper.to_array(t)
        except Exception as exc:  # noqa: BLE001 - any failure means the tensor is unusable
            raise InputError(f"{label}: tensor {t.name!r} cannot be read: its data does not match its shape {dims} "
                             f"({count} elements, {nbytes} bytes; {exc})") from None


def load_model(path: str | os.PathLike, max_bytes: int | None = None) -> onnx.ModelProto:
    """Load an ONNX model safely.

    Parameters
    ----------
    path : str or path-like
        The ``.onnx`` file.
    max_bytes : int, optional
        Refuse files (model plus external data) larger than this; default :data:`MAX_MODEL_BYTES` (read at call
        time, so a program may change the module-level default).

    Returns
    -------
    onnx.ModelProto
        The model with any external data loaded into memory.

    Raises
    ------
    InputError
        The file is missing, empty, too large, not an ONNX model, or its external data is unsafe or missing.
    """
    max_bytes = MAX_MODEL_BYTES if max_bytes is None else int(max_bytes)
    p = Path(path)
    label = str(path)
    if not p.exists():
        raise InputError(f"{label}: no such model file")
    if not p.is_file():
        raise InputError(f"{label}: not a regular file")
    size = p.stat().st_size
    if size == 0:
        raise InputError(f"{label}: the model file is empty")
    if size > max_bytes:
        raise InputError(f"{label}: the model file is {size} bytes, above the limit of {max_bytes} bytes "
                         "(raise it with --max-model-mb or Explainer(max_model_mb=...))")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{label}: cannot read the model file ({exc.strerror or exc})") from None
    model = parse_model(data, label)
    files = check_external_data(model, p.parent, label)
    if files:
        total = size + sum(f.stat().st_size for f in set(files))
        if total > max_bytes:
            raise InputError(f"{label}: model plus external data is {total} bytes, above the limit of {max_bytes} "
                             "bytes (raise it with --max-model-mb or Explainer(max_model_mb=...))")
        try:
            external_data_helper.load_external_data_for_model(model, str(p.parent))
        except Exception as exc:  # noqa: BLE001 - any failure here is a bad input
            raise InputError(f"{label}: cannot read external data ({exc})") from None
    return validate(model, label, max_bytes)


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in external_data_helper._get_all_tensors(model))


def validate(model: onnx.ModelProto, label: str = "<model>", max_bytes: int | None = None,
             base_dir: str | os.PathLike | None = None) -> onnx.ModelProto:
    """The checks :func:`load_model` runs after parsing, for a ``ModelProto`` that arrives in memory: text fields
    are UTF-8, tensor data matches declared shapes within ``max_bytes``, standard ops match their schema.

    External data follows the rule of files (:func:`check_external_data`): its locations must lie inside
    ``base_dir``, the folder the model came from. Without ``base_dir`` a model with external data is refused — it
    would otherwise be read relative to whatever the current folder is.

    Returns
    -------
    onnx.ModelProto
        ``model`` itself, or, when it has external data, a copy with that data loaded (``model`` is not changed).
    """
    max_bytes = MAX_MODEL_BYTES if max_bytes is None else int(max_bytes)
    if _has_external_data(model):
        if base_dir is None:
            t = next(t for t in external_data_helper._get_all_tensors(model)
                     if t.data_location == onnx.TensorProto.EXTERNAL)
            raise InputError(f"{label}: tensor {t.name!r} keeps its data in an external file "
                             f"({_external_location(t)!r}) and this model came from memory, so there is no folder to "
                             "read it from; load the model from its file, or pass the folder (base_dir=)")
        root = Path(base_dir)
        if not root.is_dir():
            raise InputError(f"{label}: base folder {str(base_dir)!r} for the external data is not a folder")
        files = check_external_data(model, root, label)
        total = model.ByteSize() + sum(f.stat().st_size for f in set(files))
        if total > max_bytes:
            raise InputError(f"{label}: model plus external data is {total} bytes, above the limit of {max_bytes} "
                             "bytes (raise it with --max-model-mb or Explainer(max_model_mb=...))")
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        try:
            external_data_helper.load_external_data_for_model(copy, str(root))
        except Exception as exc:  # noqa: BLE001 - any failure here is a bad input
            raise InputError(f"{label}: cannot read external data ({exc})") from None
        model = copy
    bad = _non_utf8_field(model)
    if bad:
        raise InputError(f"{label}: not a valid ONNX model (field {bad} holds bytes that are not UTF-8 text)")
    check_tensors(model, label, max_bytes)
    check_node_attributes(model, label)
    _negative_dims_to_symbolic(model)
    return model


def _negative_dims_to_symbolic(model: onnx.ModelProto) -> None:
    """A declared dimension below 0 (some converters write -1 for "dynamic") becomes a symbolic one, as ONNX Runtime
    treats it (found by fuzzing: a -1 batch reached numpy as a shape)."""
    g = model.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_value") and d.dim_value < 0:
                    d.Clear()
                    d.dim_param = "unk"


def _non_utf8_field(msg, path: str = "model") -> str | None:
    """The path of the first string field holding invalid UTF-8 (protobuf then hands out ``bytes``), else None.

    Found by fuzzing: a flipped bit in an op type made it ``bytes`` and later code, and ONNX Runtime, tripped."""
    from google.protobuf.descriptor import FieldDescriptor

    for fd, value in msg.ListFields():
        if fd.type == FieldDescriptor.TYPE_STRING:
            items = value if _repeated(fd) else [value]
            if any(not isinstance(v, str) for v in items):
                return f"{path}.{fd.name}"
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if _repeated(fd) else [value]
            for i, sub in enumerate(items):
                where = _non_utf8_field(sub, f"{path}.{fd.name}[{i}]" if _repeated(fd) else f"{path}.{fd.name}")
                if where:
                    return where
    return None


def _repeated(fd) -> bool:
    rep = getattr(fd, "is_repeated", None)
    return bool(rep) if rep is not None else fd.label == fd.LABEL_REPEATED


def parse_model(data: bytes, label: str = "<bytes>") -> onnx.ModelProto:
    """Parse serialized bytes into a ``ModelProto``; refuse anything that is not a usable model."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InputError(f"{label}: not an ONNX model (protobuf parse failed: {exc})") from None
    if not model.HasField("graph") or (len(model.graph.node) == 0 and len(model.graph.output) == 0):
        raise InputError(f"{label}: not an ONNX model (no graph inside; truncated or another protobuf?)")
    if not model.opset_import and model.ir_version == 0:
        raise InputError(f"{label}: not an ONNX model (no IR version or opset)")
    bad = _non_utf8_field(model)
    if bad:
        raise InputError(f"{label}: not a valid ONNX model (field {bad} holds bytes that are not UTF-8 text; "
                         "corrupt file?)")
    if len(model.graph.input) == 0:
        raise InputError(f"{label}: the model's graph has no inputs")
    if len(model.graph.output) == 0:
        raise InputError(f"{label}: the model's graph has no outputs")
    return model

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

from onnxfix.errors import InputError

#: Models above this size are refused unless the caller raises the limit (protobuf caps a file at 2 GiB).
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
        files.append(target)
    return files


def load_model(path: str | os.PathLike, max_bytes: int = MAX_MODEL_BYTES) -> onnx.ModelProto:
    """Load an ONNX model safely.

    Parameters
    ----------
    path : str or path-like
        The ``.onnx`` file.
    max_bytes : int
        Refuse files (model plus external data) larger than this.

    Returns
    -------
    onnx.ModelProto
        The model with any external data loaded into memory.

    Raises
    ------
    InputError
        The file is missing, empty, too large, not an ONNX model, or its external data is unsafe or missing.
    """
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
        raise InputError(f"{label}: the model file is {size} bytes, above the limit of {max_bytes}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{label}: cannot read the model file ({exc.strerror or exc})") from None
    model = parse_model(data, label)
    files = check_external_data(model, p.parent, label)
    if files:
        total = size + sum(f.stat().st_size for f in set(files))
        if total > max_bytes:
            raise InputError(f"{label}: model plus external data is {total} bytes, above the limit of {max_bytes}")
        try:
            external_data_helper.load_external_data_for_model(model, str(p.parent))
        except Exception as exc:  # noqa: BLE001 - any failure here is a bad input
            raise InputError(f"{label}: cannot read external data ({exc})") from None
    return model


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
    if len(model.graph.input) == 0:
        raise InputError(f"{label}: the model's graph has no inputs")
    if len(model.graph.output) == 0:
        raise InputError(f"{label}: the model's graph has no outputs")
    return model

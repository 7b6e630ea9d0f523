"""Class names for a model's output: a file, the model's metadata, a sibling file, or ImageNet for 1000 classes."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from onnxfix.errors import InputError


def read_labels_file(path: str | Path) -> list[str]:
    """One label per line (blank lines kept as empty names), or a JSON list / {index: name} object."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read labels ({exc})") from None
    s = text.strip()
    if s.startswith("[") or s.startswith("{"):
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: labels file is not valid JSON ({exc})") from None
        if isinstance(obj, dict):
            n = max(int(k) for k in obj) + 1 if obj else 0
            return [str(obj.get(str(i), obj.get(i, str(i)))) for i in range(n)]  # type: ignore[call-overload]
        return [str(x) for x in obj]
    return [line.rstrip("\r") for line in text.rstrip("\n").split("\n")]


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, index order."""
    data = resources.files("onnxfix").joinpath("data/imagenet_classes.txt")
    try:
        return data.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except (FileNotFoundError, OSError):
        return [str(i) for i in range(1000)]


def find_labels(
    model_path: str | Path | None, metadata: dict[str, str], n_classes: int | None,
    labels_file: str | list[str] | None = None,
) -> list[str] | None:
    """Labels in order of preference: ``labels_file``, metadata ``onnxfix.labels``, ``<model>.labels.txt``,
    ImageNet when the output has 1000 (or 1001, background first) classes."""
    if isinstance(labels_file, (list, tuple)):
        return [str(x) for x in labels_file]
    if labels_file:
        return read_labels_file(labels_file)
    if "onnxfix.labels" in metadata:
        try:
            return [str(x) for x in json.loads(metadata["onnxfix.labels"])]
        except (json.JSONDecodeError, TypeError):
            pass
    if model_path is not None:
        p = Path(model_path)
        for cand in (p.with_suffix(".labels.txt"), p.parent / "labels.txt"):
            if cand.is_file():
                return read_labels_file(cand)
    if n_classes == 1000:
        return imagenet_labels()
    if n_classes == 1001:
        return ["background"] + imagenet_labels()
    return None


def label_of(labels: list[str] | None, index: int) -> str:
    if labels is not None and 0 <= index < len(labels):
        return labels[index]
    return str(index)

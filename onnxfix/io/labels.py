"""Class names for a model's output: a file, the model's metadata (onnxfix's own, or what exporters write:
:func:`metadata_labels`), a sibling file, or ImageNet for 1000 classes.

Labels come from untrusted files and models, so reading them is bounded (:mod:`onnxfix.io.files`): a regular file of
at most :data:`MAX_LABELS_BYTES`, JSON nested at most two levels, one name per class. A labels source whose count
differs from the model's class count is refused (a 1000-name list on a 1001-class model would shift every name by
one: silently wrong answers), and so is a ``{index: name}`` object with an index outside the classes (a 20-byte
``{"300000000": "x"}`` would otherwise allocate gigabytes). Labels are shown to users through
:func:`onnxfix.errors.printable`, which escapes terminal control characters.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from onnxfix.errors import InputError, printable
from onnxfix.io.files import is_regular_file, loads, read_text

#: Largest labels file read (bytes).
MAX_LABELS_BYTES = 16 * 1024**2
#: Most names accepted when the model's class count is unknown (a dynamic class axis).
MAX_LABELS = 1_000_000


def _names(obj: object, label: str, limit: int) -> list[str]:
    """A JSON list of names or an ``{index: name}`` object → the list; anything else is refused."""
    if isinstance(obj, list):
        if len(obj) > limit:
            raise InputError(f"{label}: {len(obj)} labels, more than the model's {limit} classes")
        bad = next((x for x in obj if not isinstance(x, (str, int, float)) or isinstance(x, bool)), None)
        if bad is not None or any(isinstance(x, bool) for x in obj):
            raise InputError(f"{label}: labels must be a JSON list of names (strings); found "
                             f"{printable(json.dumps(bad))[:40]}")
        return [str(x) for x in obj]
    if isinstance(obj, dict):
        out: dict[int, str] = {}
        for k, v in obj.items():
            if not re.fullmatch(r"[0-9]{1,9}", k) or int(k) >= limit:
                raise InputError(f"{label}: label key {printable(k)[:40]!r} is not a class index in 0..{limit - 1}")
            if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                raise InputError(f"{label}: the label of class {k} is not a name")
            out[int(k)] = str(v)
        n = max(out) + 1 if out else 0
        return [out.get(i, str(i)) for i in range(n)]
    kind = {str: "a string", int: "a number", float: "a number"}.get(type(obj), type(obj).__name__)
    raise InputError(f"{label}: labels must be a JSON list of names or an {{index: name}} object, not {kind}")


def read_labels_file(path: str | Path, n_classes: int | None = None) -> list[str]:
    """One label per line (blank lines kept as empty names), or a JSON list / ``{index: name}`` object.

    Parameters
    ----------
    path : str or Path
        A regular file of at most :data:`MAX_LABELS_BYTES`.
    n_classes : int, optional
        The model's class count: a JSON object's indices must be below it.

    Raises
    ------
    InputError
        Not a regular file, too big, not UTF-8, malformed JSON, or indices outside the classes.
    """
    label = printable(str(path))
    text = read_text(path, "labels", MAX_LABELS_BYTES)
    limit = n_classes if n_classes else MAX_LABELS
    s = text.strip()
    if s.startswith("[") or s.startswith("{"):
        return _names(loads(s, str(path), "labels file", max_depth=2), label, limit)
    lines = [line.rstrip("\r") for line in text.rstrip("\n").split("\n")]
    if len(lines) > max(limit, 1):
        raise InputError(f"{label}: {len(lines)} labels, more than the model's {limit} classes")
    return lines


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, index order."""
    data = resources.files("onnxfix").joinpath("data/imagenet_classes.txt")
    try:
        return data.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except (FileNotFoundError, OSError):
        return [str(i) for i in range(1000)]


def _check_count(labels: list[str], n_classes: int | None, where: str) -> list[str]:
    if n_classes and len(labels) != n_classes:
        raise InputError(f"{where}: {len(labels)} labels for a model with {n_classes} classes; give one name per "
                         "class in class-index order")
    return labels


def find_labels(
    model_path: str | Path | None, metadata: dict[str, str], n_classes: int | None,
    labels_file: str | list[str] | None = None,
) -> list[str] | None:
    """Labels in order of preference: ``labels_file``, metadata ``onnxfix.labels``, ``<model>.labels.txt``,
    ``labels.txt`` beside the model (when it has one name per class), ImageNet when the output has 1000 (or 1001,
    background first) classes.

    Raises
    ------
    InputError
        The labels given, or those of the metadata, do not give one name per class (or cannot be read).
    """
    if isinstance(labels_file, (list, tuple)):
        return _check_count([str(x) for x in labels_file], n_classes, "labels")
    if labels_file:
        return _check_count(read_labels_file(labels_file, n_classes), n_classes, printable(str(labels_file)))
    if "onnxfix.labels" in metadata:
        where = "the model's metadata onnxfix.labels"
        text = metadata["onnxfix.labels"]
        if len(text) > MAX_LABELS_BYTES:
            raise InputError(f"{where}: above the limit of {MAX_LABELS_BYTES} bytes")
        obj = loads(text, where, "the label list", max_depth=2)
        return _check_count(_names(obj, where, n_classes or MAX_LABELS), n_classes, where)
    if model_path is not None:
        p = Path(model_path)
        own = p.with_suffix(".labels.txt")
        if is_regular_file(own):
            return _check_count(read_labels_file(own, n_classes), n_classes, printable(str(own)))
        shared = p.parent / "labels.txt"  # a folder-wide file: used only when it fits this model
        if is_regular_file(shared):
            try:
                return _check_count(read_labels_file(shared, n_classes), n_classes, printable(str(shared)))
            except InputError:
                pass
    if n_classes == 1000:
        return imagenet_labels()
    if n_classes == 1001:
        return ["background"] + imagenet_labels()
    return None


#: metadata keys exporters write class names under, in the order they are tried
METADATA_KEYS = ("names", "labels", "classes", "character")


def _split(text: str) -> list[str]:
    """A list/tuple/dict literal, else newline-separated (blank lines dropped), else comma-separated text."""
    import ast

    try:
        obj = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return [s for s in text.splitlines() if s] if "\n" in text else [s.strip() for s in text.split(",")]
    if isinstance(obj, dict):
        keys = [k for k in obj if isinstance(k, int) or (isinstance(k, str) and re.fullmatch(r"[0-9]{1,9}", k))]
        if len(keys) != len(obj) or not obj or max(int(k) for k in keys) >= MAX_LABELS:
            raise ValueError("not an {index: name} dict")
        table = {int(k): str(v) for k, v in obj.items()}
        return [table.get(i, str(i)) for i in range(max(table) + 1)]
    if isinstance(obj, list | tuple):
        return [str(x) for x in obj]
    raise ValueError("not a list of names")


def metadata_labels(metadata: dict[str, str], n_classes: int | None) -> list[str] | None:
    """Class names from the metadata exporters write, or ``None`` when none fits the output's ``n_classes``.

    * ultralytics ``names``: a dict literal ``{0: 'person', 1: 'bicycle', ...}``;
    * ``labels`` / ``classes``: a list literal, or newline- or comma-separated names;
    * PaddleOCR ``character``: the CTC vocabulary, one character per line; the classes are ``blank`` (index 0), the
      vocabulary, then a space (PaddleOCR's ``CTCLabelDecode`` with ``use_space_char``) — without the space when the
      output has exactly one class fewer. With an unknown class count the space is kept (PaddleOCR's default).

    Parameters
    ----------
    metadata : dict
        The model's ``metadata_props``.
    n_classes : int, optional
        The explained output's class count; a source with another count is skipped.
    """
    for key in METADATA_KEYS:
        text = metadata.get(key)
        if not text or len(text) > MAX_LABELS_BYTES:
            continue
        if key == "character":
            lines = text.split("\n")  # "\n" only: a vocabulary may hold other line-break characters
            if lines[-1] == "":
                lines.pop()
            names = ["blank", *(ln[:-1] if ln.endswith("\r") else ln for ln in lines)]
            if n_classes is None or n_classes == len(names) + 1:
                names.append(" ")
        else:
            try:
                names = _split(text)
            except ValueError:
                continue
        if names and len(names) <= MAX_LABELS and (n_classes is None or len(names) == n_classes):
            return names
    return None


def label_of(labels: list[str] | None, index: int) -> str:
    """The name of class ``index`` (its index as text when there is none)."""
    if labels is not None and 0 <= index < len(labels):
        return labels[index]
    return str(index)

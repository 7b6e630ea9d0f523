"""Errors that reach users. Each carries the CLI exit code of DESIGN §2.

``InputError`` (exit 2): bad usage or an unreadable input — the message names the file and the reason.
``UnsupportedModel`` / ``UnsupportedOp`` (exit 3): the model is readable but an engine cannot handle it; the
message names the op types and nodes, and what still works.
"""

from __future__ import annotations


class OnnxfixError(Exception):
    """Base class of every error onnxfix reports to a user; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class InputError(OnnxfixError):
    """A file or argument that cannot be used (missing, corrupt, wrong shape, unsafe path...)."""

    exit_code = 2


class OutputError(InputError, OSError):
    """An output that cannot be written (disk full, name too long, read-only folder...): exit 2, and still an
    ``OSError`` for callers that catch those. The message names the path and the reason."""


class UnsupportedModel(OnnxfixError):
    """A valid model that an engine cannot explain."""

    exit_code = 3


class UnsupportedOp(UnsupportedModel):
    """An op on the explained path that has no rule in the engine asked for.

    Parameters
    ----------
    engine : str
        ``"fixations"`` or ``"autodiff"``.
    ops : list of (op_type, node_name)
        The offending nodes.
    still_works : list of str
        Methods that do not need the missing rules.
    """

    def __init__(self, engine: str, ops: list[tuple[str, str]], still_works: list[str] | None = None):
        self.engine = engine
        self.ops = list(ops)
        self.still_works = list(still_works or [])
        kinds = sorted({op for op, _ in self.ops})
        nodes = ", ".join(f"{name or '<unnamed>'} ({op})" for op, name in self.ops[:8])
        more = f" and {len(self.ops) - 8} more" if len(self.ops) > 8 else ""
        msg = f"{engine}: no rule for op type {', '.join(kinds)} at node {nodes}{more}"
        if self.still_works:
            msg += f"; methods that still work: {', '.join(self.still_works)}"
        super().__init__(msg)


#: Characters escaped when untrusted text (labels, file names, messages quoting them) reaches a terminal: C0 and C1
#: controls, DEL, the bidirectional overrides/isolates (they reorder what follows) and lone surrogates (undecodable
#: bytes of a file name, which a UTF-8 stream cannot even encode).
_UNSAFE = {c for c in range(0x20)} | {0x7F} | set(range(0x80, 0xA0)) | set(range(0x202A, 0x202F)) \
    | set(range(0x2066, 0x206A)) | {0x200E, 0x200F, 0x061C}
_ESCAPES = {i: (f"\\x{i:02x}" if i < 0x100 else f"\\u{i:04x}") for i in _UNSAFE}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def printable(text: object) -> str:
    """``text`` with every terminal control character escaped (``\\x1b``, ``\\n``, ``\\u202e``…), so that a label
    or a file name from an untrusted source can neither rewrite the user's terminal nor break a one-line message.

    Printable text, non-ASCII letters included, is unchanged.
    """
    s = str(text)
    if s.isprintable() and s.isascii():
        return s
    out = s.translate(_ESCAPES)
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in out):
        out = "".join(f"\\u{ord(ch):04x}" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in out)
    return out

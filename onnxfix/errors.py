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

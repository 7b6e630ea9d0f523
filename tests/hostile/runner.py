"""Run one corpus case in-process through ``onnxfix.cli.main`` and capture what a user would see."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

from tests.hostile.corpus import Case


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    argv: list[str]
    before: dict[str, bytes]  # the files of the case's folder (path relative to it → content) before the run

    def after(self, folder: Path) -> dict[str, bytes]:
        return snapshot(folder)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every regular file under ``folder`` (not following links) → its bytes."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = p.read_bytes()
    return out


def run_case(case: Case, folder: Path) -> Outcome:
    """Build ``case`` in the empty ``folder`` and run the CLI on it (in this process)."""
    from onnxfix.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    argv = case.build(folder)
    before = snapshot(folder)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return Outcome(code, out.getvalue(), err.getvalue(), argv, before)

"""Issue #17: the round-2 corpus (tests/hostile/corpus2.py), run in-process through ``onnxfix.cli.main``."""

from __future__ import annotations

import collections
import contextlib
import fnmatch
import io
import re
from pathlib import Path

import pytest

from tests.hostile.corpus2 import CLASSES, cases
from tests.hostile.runner import snapshot

CASES = cases()
#: Terminal control characters that must never reach stdout/stderr raw (newline aside).
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _parts(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.part")] if folder.exists() else []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case, tmp_path):
    from onnxfix.cli import main
    from onnxfix.errors import OnnxfixError

    folder = tmp_path / "c"
    folder.mkdir()
    built = case.build(folder)
    before = snapshot(folder)
    parts_before = set(_parts(folder))
    out, err = io.StringIO(), io.StringIO()
    patch = case.patch(folder) if case.patch else contextlib.nullcontext()
    code, raised = 0, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), patch:
        if callable(built):
            try:
                built()
            except OnnxfixError as exc:
                code, raised = exc.exit_code, exc
        else:
            code = main(list(built))
    stdout, stderr = out.getvalue(), err.getvalue()
    if raised is not None:
        stderr = f"onnxfix: error: {raised}\n"
    if case.lead and (code != case.code or not all(w in stderr for w in case.message)):
        pytest.xfail(f"needs the core API of issue #10: {stderr.strip()[:200]}")
    assert code == case.code, (code, stderr, stdout)
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert set(_parts(folder)) <= parts_before, "temporary files left behind"
    assert not UNSAFE.search(stdout) and not UNSAFE.search(stderr), (stdout, stderr)
    after = snapshot(folder)
    changed = [k for k, v in before.items() if after.get(k) != v]
    may_change = "--overwrite" in list(map(str, built if not callable(built) else [])) or "modifies-own" in case.tags
    assert not changed or may_change, ("an input changed", changed)
    new = sorted(set(after) - set(before))
    if case.code != 0:
        lines = stderr.strip().splitlines()
        # one error line, last; before it only the notes of --method all and evaluate's list of skipped rows
        assert lines and lines[-1].startswith("onnxfix: error: "), stderr
        assert all(re.match(r"(onnxfix: skipped |onnxfix evaluate: |  )", x) for x in lines[:-1]), stderr
        for word in case.message:
            assert word in stderr, (word, stderr)
        allowed = case.new if "broken-pipe" in case.id or callable(built) else ()
        stray = [n for n in new if not any(fnmatch.fnmatch(n, p) for p in allowed)]
        assert not stray, ("a failed run wrote files", stray)
        return
    stray = [n for n in new if not any(fnmatch.fnmatch(n, p) for p in case.new)]
    assert not stray, ("unexpected files", stray, case.new)
    if case.check:
        case.check(folder, list(map(str, built)) if not callable(built) else [], stdout, stderr)


def test_round2_corpus_covers_every_class():
    n = collections.Counter(c.cls for c in CASES)
    assert set(n) == set(CLASSES), set(CLASSES) ^ set(n)
    assert len(CASES) >= 100 and min(n.values()) >= 3, n

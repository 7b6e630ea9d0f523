"""The hostile-input corpus (issue #5): generators of bad or unusual models, images and CLI calls, each case with
its expected outcome. See :mod:`tests.hostile.corpus` and docs/robustness.md."""

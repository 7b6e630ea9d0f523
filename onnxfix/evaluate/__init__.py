"""Evaluation of explanations: metrics, datasets and ``onnxfix evaluate`` (issue #4)."""

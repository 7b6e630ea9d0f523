"""Batch explanations: millions of images into one resumable Parquet table, on one machine or a Dask cluster.

>>> import onnxfix.batch
>>> onnxfix.batch.run("model.onnx", ["photos/"], methods=["gradcam", "fixations"], out="results/")
>>> df = onnxfix.batch.read_results("results/")          # pandas when installed, else a pyarrow Table

The command line is ``onnxfix batch MODEL INPUT... --methods M1,M2 --out DIR`` (:mod:`onnxfix.batch.cli`);
docs/batch.md describes the table, the resume rule and how to run on an existing Dask cluster.
"""

from onnxfix.batch.runner import run
from onnxfix.batch.table import decode_map, read_results

__all__ = ["decode_map", "read_results", "run"]

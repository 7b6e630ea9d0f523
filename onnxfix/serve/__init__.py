"""``onnxfix serve``: explanations over HTTP (Starlette + uvicorn, the ``onnxfix[serve]`` extra; docs/serve.md)."""

"""``onnxfix serve MODEL [--methods ...] [--host 127.0.0.1] [--port 8000]``: the HTTP service (docs/serve.md)."""

from __future__ import annotations

import argparse
import sys

from onnxfix.errors import InputError
from onnxfix.sessions import make_session


def cuda_status() -> str | None:
    """``None`` when ONNX Runtime's CUDA execution provider loads here, else one line saying why not.

    A build without CUDA is told by ``get_available_providers``; a GPU build whose CUDA/cuDNN libraries are missing
    lists the provider but fails to create it (ORT then logs many lines and silently runs on the CPU), so a tiny
    session is made with ORT's logging silenced and asked which provider it got."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    avail = ort.get_available_providers()
    if "CUDAExecutionProvider" not in avail:
        return f"this onnxruntime build has no CUDA execution provider ({', '.join(avail)})"
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:
        ort.set_default_logger_severity(4)
        s = make_session(m, ["CUDAExecutionProvider", "CPUExecutionProvider"], options=so)
        got = s.get_providers()
    except Exception as exc:  # noqa: BLE001 - ORT raises many types
        return f"the CUDA execution provider cannot load ({(str(exc).strip().splitlines() or ['?'])[0][:160]})"
    finally:
        ort.set_default_logger_severity(3)
    if not got or got[0] != "CUDAExecutionProvider":
        return "the CUDA execution provider cannot load (CUDA or cuDNN libraries missing or no GPU)"
    return None


def _parser() -> argparse.ArgumentParser:
    from onnxfix.cli import add_model_options

    p = argparse.ArgumentParser(prog="onnxfix serve", description="Serve explanations over HTTP (docs/serve.md).")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("--methods", default=None, help="comma-separated methods to offer (default: every one that "
                                                   "applies)")
    p.add_argument("--default-method", default=None, help="method when a request names none (default: gradcam)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--batch-window-ms", type=float, default=10.0,
                   help="how long a request waits for others to batch with (default 10)")
    p.add_argument("--max-batch", type=int, default=8, help="requests per explain call (default 8)")
    p.add_argument("--no-batching", action="store_true", help="explain requests one at a time")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (default 20 MB)")
    p.add_argument("--max-pending", type=int, default=64,
                   help="requests in progress beyond which new ones get 503 (default 64)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                   help="refuse images above N pixels (default 100000000)")
    p.add_argument("--max-model-mb", type=float, default=None, metavar="MB")
    add_model_options(p)
    return p


def cmd_serve(argv: list[str]) -> int:
    """Load the model once, then serve until interrupted."""
    a = _parser().parse_args(argv)
    try:
        import uvicorn

        from onnxfix.serve.app import ServeConfig, create_app
    except ImportError as exc:
        raise InputError(f"onnxfix serve needs the serve extra ({exc.name} is missing): "
                         "pip install 'onnxfix[serve]'") from None
    from pathlib import Path

    from onnxfix.api import Explainer
    from onnxfix.cli import _overrides

    if not 0 < a.port < 65536:
        raise InputError(f"--port {a.port} is outside 1..65535")
    if a.max_batch < 1 or a.max_pending < 1 or a.max_upload_mb <= 0 or a.batch_window_ms < 0:
        raise InputError("--max-batch, --max-pending and --max-upload-mb must be positive, --batch-window-ms >= 0")
    provider = a.provider
    if provider == "cuda":
        why = cuda_status()
        if why:
            print(f"onnxfix serve: {why}; running on the CPU", file=sys.stderr, flush=True)
            provider = "cpu"
    ex = Explainer(a.model, provider=provider, labels=a.labels, output=a.output, preprocess=_overrides(a),
                   threads=a.threads, max_image_pixels=a.max_image_pixels, max_model_mb=a.max_model_mb)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()] if a.methods else None
    cfg = ServeConfig(methods=methods, default_method=a.default_method,
                      batch_window_ms=0.0 if a.no_batching else a.batch_window_ms,
                      max_batch=1 if a.no_batching else a.max_batch, max_upload_mb=a.max_upload_mb,
                      max_pending=a.max_pending, top_k=a.top_k, model_name=Path(a.model).name)
    app = create_app(ex, cfg)
    _ = ex.spec  # preprocessing errors surface now, not at the first request
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"onnxfix serve: listening on {a.host}, not only this machine; the service has no authentication",
              file=sys.stderr, flush=True)
    served = ", ".join(app.app.state.served)
    batching = "off" if cfg.max_batch == 1 else f"up to {cfg.max_batch} per call, {cfg.batch_window_ms:g} ms window"
    print(f"onnxfix serve: {cfg.model_name} on http://{a.host}:{a.port}/ ({provider}; methods: {served}; "
          f"batching {batching})", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False,
                limit_concurrency=a.max_pending + 16, timeout_keep_alive=5)
    return 0

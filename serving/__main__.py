"""`python -m serving --model-base-path MODELS/<name>`: serve the highest version over HTTP.
Usage errors go through tfmicle.cli like every CLI of the project (one line, exit 2).
Map: docs/architecture.md."""

from __future__ import annotations

import logging
import os
import socket
import sys

from tfmicle import cli, fileio

from .config import API_KEY_ENV, CONFIG_ENV, ServingConfig, setup_logging

log = logging.getLogger("serving")


def build_parser() -> cli.ArgumentParser:
    d = ServingConfig(model_base_path="x")
    p = cli.ArgumentParser(
        prog="python -m serving",
        description="Serve a TF-Serving-style model repository (MODELS/<name>/<version>/saved_model.pb) over HTTP: "
        "POST /classify, POST /similar, TF Serving REST (/v1), Open Inference Protocol v2 (/v2), GET /metrics, /docs.",
    )
    p.add_argument("--model-base-path", required=True, metavar="DIR",
                   help="folder or URL (gs://...) of integer version sub-folders (TF Serving layout); the highest "
                   "ready (published, or settled: --settle-seconds), loadable one is served")
    p.add_argument("--model-name", default=None, metavar="NAME", help="name in the URLs (default: the folder's name)")
    p.add_argument("--host", default=d.host, help="interface to listen on; 0.0.0.0 for all, e.g. in a container (default: %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="port; 0 picks a free one and the log says which (default: %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                   metavar="N", help="images per model call; 1 turns batching off (default: %(default)s)")
    p.add_argument("--batch-timeout-ms", type=float, default=d.batch_timeout_ms,
                   metavar="MS", help="longest wait for a batch to fill while the model is idle (default: %(default)s)")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, metavar="BYTES", help="largest request body, 413 above (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=d.max_images, metavar="N", help="most images in one request, 413 above (default: %(default)s)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   metavar="N", help="largest width*height of one image, read from its header before decoding, 413 above (default: %(default)s)")
    p.add_argument("--max-queue-images", type=int, default=d.max_queue_images,
                   metavar="N", help="images waiting for the model before new requests get 503 (default: %(default)s)")
    p.add_argument("--api-key", default=None,
                   metavar="KEY", help=f"require 'Authorization: Bearer KEY' on every route but the health checks (default: ${API_KEY_ENV}; prefer the variable, argv is visible in ps)")
    p.add_argument("--poll-seconds", type=float, default=d.poll_seconds,
                   metavar="S", help="how often to look for new versions; 0 never (default: %(default)s)")
    p.add_argument("--settle-seconds", type=float, default=d.settle_seconds, metavar="S",
                   help="serve a version folder without published.json (a TF Serving repository) once it holds "
                   "saved_model.pb and variables/ and none of its files has changed for S seconds; at start-up "
                   "a folder already that old is served at once (default: %(default)s)")
    p.add_argument("--require-published", action="store_true",
                   help="serve only versions published with published.json (tfmicle.export writes it; "
                   "'python -m tfmicle.model_format publish DIR' for other tools' SavedModels)")
    p.add_argument("--decode-threads", type=int, default=d.decode_threads,
                   metavar="N", help="threads that parse bodies and check images (default: %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers,
                   metavar="N", help="processes, each with its own model copy and batcher; 1 is usually best (default: %(default)s)")
    p.add_argument("--keep-alive-timeout", type=float, default=d.keep_alive_timeout_s, metavar="S",
                   help="close a keep-alive connection idle this long between requests (default: %(default)s)")
    p.add_argument("--header-timeout", type=float, default=d.header_timeout_s, metavar="S",
                   help="a request's line and headers must arrive within S of its first byte, else 408 and "
                        "close (default: %(default)s)")
    p.add_argument("--body-timeout", type=float, default=d.body_timeout_s, metavar="S",
                   help="longest wait for the next piece of a request body, else 408 and close (default: %(default)s)")
    p.add_argument("--max-header-bytes", type=int, default=d.max_header_bytes, metavar="BYTES",
                   help="largest request line + headers, 431 above (default: %(default)s)")
    p.add_argument("--similar-index", default=None, metavar="DIR",
                   help="case indexes for POST /similar and /classify?similar=k: a folder (or URL) holding DIR/<version>/ "
                   "per model version, or one index folder (index.json in it) used for the version that built it "
                   "(default: each version's own <version>/similar/); an index of another model version is refused")
    p.add_argument("--similar-fields", default=d.similar_fields, metavar="LIST",
                   help="what a similar case shows: a comma list of case_id, label, similarity, metadata or "
                   "metadata.COLUMN, e.g. label,similarity when case ids are sensitive (default: %(default)s)")
    p.add_argument("--log-level", default=d.log_level, choices=["debug", "info", "warning", "error"], help="(default: %(default)s)")
    return p


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise cli.UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run("serving", lambda: serve(args))


def serve(args) -> int:
    api_key = args.api_key if args.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    config = ServingConfig(
        model_base_path=args.model_base_path, model_name=args.model_name or "", host=args.host, port=args.port,
        max_batch_size=args.max_batch_size, batch_timeout_ms=args.batch_timeout_ms,
        max_body_bytes=args.max_body_bytes, max_images=args.max_images, max_pixels=args.max_pixels,
        max_queue_images=args.max_queue_images, api_key=api_key, poll_seconds=args.poll_seconds,
        settle_seconds=args.settle_seconds, require_published=args.require_published,
        decode_threads=args.decode_threads, workers=args.workers, keep_alive_timeout_s=args.keep_alive_timeout,
        header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
        max_header_bytes=args.max_header_bytes, log_level=args.log_level,
        similar_index=args.similar_index, similar_fields=args.similar_fields,
    )
    try:
        config.validate()
    except ValueError as e:
        raise cli.UsageError(str(e)) from None
    base = config.model_base_path  # a folder or a URL (gs://...): tfmicle.fileio
    if not fileio.isdir(base):
        raise cli.UsageError(f"--model-base-path {base} is not a folder")
    if config.similar_index is not None and not fileio.isdir(config.similar_index):
        raise cli.UsageError(f"--similar-index {config.similar_index} is not a folder")
    from tfmicle.model_format import list_versions

    if not list_versions(base):
        raise cli.UsageError(f"--model-base-path {base} has no integer version folders (expected e.g. "
                             f"{fileio.join(base, '1')})")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TF's INFO banner out of the log
    setup_logging(config.log_level)
    import uvicorn

    from .protocol import PROTOCOL, configure

    configure(config.header_timeout_s, config.max_header_bytes)
    if config.workers > 1:
        if config.port == 0:
            raise cli.UsageError("--port 0 needs --workers 1 (the workers must share a known port)")
        return _serve_workers(config, uvicorn, PROTOCOL)

    sock = _listen(config.host, config.port)
    from .app import create_app

    try:
        app = create_app(config)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    # Printed whatever the log level: scripts (and the tests) read the port from it.
    print(f"serving: listening on http://{shown}:{port} (model '{config.model_name}', "
          f"version {app.state.serving.repository.current.version})", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, log_level=config.log_level,
                                           timeout_graceful_shutdown=10, http=PROTOCOL, ws="none",
                                           timeout_keep_alive=config.keep_alive_timeout_s))
    server.run(sockets=[sock])
    return 0


def _serve_workers(config: ServingConfig, uvicorn, protocol: str) -> int:
    """N worker processes on one port; /metrics sums over them (serving.metrics' multiprocess
    mode, in a fresh folder unless PROMETHEUS_MULTIPROC_DIR is set already)."""
    import shutil
    import tempfile

    from .metrics import MULTIPROC_ENV

    os.environ[CONFIG_ENV] = config.to_json()
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="serving-metrics-")
    shown = f"[{config.host}]" if ":" in config.host else config.host
    # The same line as one worker prints (scripts and the tests read the port from it).
    print(f"serving: listening on http://{shown}:{config.port} (model '{config.model_name}', "
          f"{config.workers} workers)", file=sys.stderr, flush=True)
    try:
        uvicorn.run("serving.app:create_app_from_env", factory=True, host=config.host, port=config.port,
                    workers=config.workers, log_config=None, access_log=False, log_level=config.log_level,
                    http=protocol, ws="none", timeout_keep_alive=config.keep_alive_timeout_s)
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

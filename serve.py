"""Step 6: the search server and its page, over the indices in OUT_DIR/knn_indices (README: Search server).

    python serve.py [--SERVE_PORT=8000] [--SERVE_HOST=0.0.0.0] [--QUANTIZE_INT8=True]
    python serve.py --IMG_DIR=path/to/your/images --WATCH=True   (make serve-own IMG_DIR=...)

Opens the indices (memory-mapped), their item tables and the ONNX sessions once, then answers until Ctrl-C.
Needs no torch when OUT_DIR/onnx holds the current export (step 5 makes it).
With --WATCH=True it keeps the indices in step with IMG_DIR as images arrive, change and go (live/watch.py),
building them first when there are none.
"""

import socket
from collections.abc import Callable
from types import SimpleNamespace

import uvicorn

from config_reader import load_config
from prompt_search.cli import run
from prompt_search.errors import UserError
from prompt_search.layout import index_set
from prompt_search.output_sets import current_set
from prompt_search.search.access import check_exposure
from prompt_search.search.answers import ServerSettings
from prompt_search.search.server import create_app, listening_socket
from prompt_search.search.service import DecodeLimits, open_searcher
from prompt_search.settings import EmbedSettings, IndexSettings, QuerySettings, WatchSettings


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    check_exposure(cfg.SERVE_HOST, cfg.SERVE_TOKEN, cfg.SERVE_OPEN)
    if not cfg.WATCH:
        serve(cfg, None)
        return
    if not cfg.IMG_DIR:
        raise UserError("--WATCH=True keeps the index of a folder in step with it: set --IMG_DIR to the folder")
    from prompt_search.live import compaction, watch  # here: they need torch, a server without --WATCH does not

    with compaction.hold_claims(cfg.OUT_DIR):  # the one writer of OUT_DIR's sets while it runs
        if current_set(index_set(cfg.OUT_DIR, "visual")) is None:  # first use: the batch steps build it
            compaction.fold(WatchSettings.of(cfg), EmbedSettings.of(cfg), IndexSettings.of(cfg))
        serve(cfg, watch.Watch)


def serve(cfg: SimpleNamespace, watcher: Callable | None) -> None:
    """Open the indices and answer until Ctrl-C; with watcher (live.watch.Watch), kept in step with IMG_DIR."""
    searcher = open_searcher(cfg.OUT_DIR, cfg.IMG_DIR, QuerySettings.of(cfg),
                             DecodeLimits.of(cfg.MAX_DECODE_PIXELS, cfg.DECODE_SLOTS))
    sock = listening_socket(cfg.SERVE_HOST, cfg.SERVE_PORT)  # port 0 is a known free port before the URL is printed
    host = f"[{cfg.SERVE_HOST}]" if sock.family == socket.AF_INET6 else cfg.SERVE_HOST
    listening_url = f"http://{host}:{sock.getsockname()[1]}"
    app = create_app(searcher, ServerSettings.of(cfg, listening_url))
    watch = watcher(searcher, WatchSettings.of(cfg), EmbedSettings.of(cfg), IndexSettings.of(cfg)) if watcher else None
    if watch:
        app.state.watch = watch.health
        watch.start()
        print(f"watching {cfg.IMG_DIR} ({watch.arrivals.mode})", flush=True)
    print(f"search page: {listening_url}/  (Ctrl-C stops)", flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=5)).run(sockets=[sock])
    finally:
        if watch:
            watch.stop()


if __name__ == "__main__":
    run(main)

"""Step 6: the search server and its page, over the indices in OUT_DIR/knn_indices (README: Search server).

    python serve.py [--SERVE_PORT=8000] [--SERVE_HOST=0.0.0.0] [--QUANTIZE_INT8=True]

Opens the indices (memory-mapped), their item tables and the ONNX sessions once, then answers until Ctrl-C.
Needs no torch when OUT_DIR/onnx holds the current export (step 5 makes it).
"""

import socket

import uvicorn

from config_reader import load_config
from prompt_search.cli import run
from prompt_search.layout import images_folder, onnx_folder
from prompt_search.search.access import check_exposure
from prompt_search.search.answers import ServerSettings
from prompt_search.search.core import open_sides
from prompt_search.search.encoder import ensure_export, open_encoder
from prompt_search.search.server import create_app, listening_socket
from prompt_search.search.service import DecodeLimits, Searcher
from prompt_search.settings import QuerySettings


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    check_exposure(cfg.SERVE_HOST, cfg.SERVE_TOKEN, cfg.SERVE_OPEN)
    sides = open_sides(cfg.OUT_DIR, cfg.MODEL)  # first: a wrong OUT_DIR is said before anything is written
    sock = listening_socket(cfg.SERVE_HOST, cfg.SERVE_PORT)  # port 0 is a known free port before the URL is printed
    host = f"[{cfg.SERVE_HOST}]" if sock.family == socket.AF_INET6 else cfg.SERVE_HOST
    listening_url = f"http://{host}:{sock.getsockname()[1]}"
    onnx_dir, settings = onnx_folder(cfg.OUT_DIR), QuerySettings.of(cfg)
    ensure_export(onnx_dir, settings)
    encoder = open_encoder(onnx_dir, settings)
    searcher = Searcher(sides, cfg.MODEL, encoder, images_folder(cfg.OUT_DIR, cfg.IMG_DIR),
                        DecodeLimits.of(cfg.MAX_DECODE_PIXELS, cfg.DECODE_SLOTS))
    app = create_app(searcher, ServerSettings.of(cfg, listening_url))
    print(f"search page: {listening_url}/  (Ctrl-C stops)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=5)).run(sockets=[sock])


if __name__ == "__main__":
    run(main)

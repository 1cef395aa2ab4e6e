"""Step 7: a query's results as a training set in kohya's layout (README: Triage), with ONNX CLIP on the CPU.

    python export_results.py --INPUT_PROMPT="a castle at dusk" [--NUM_RESULTS=100] [--SORT=aesthetic] [--GROUP=prompt]
                             [--EXPORT_DIR=castles] [--EXPORT_INDEX=images] [--EXPORT_QUERY=text|image]

Creates EXPORT_DIR (never an existing folder): EXPORT_SUBFOLDER/0001.png beside 0001.txt, its prompt as caption,
for each result, and results.parquet with every field. The query is step 5's text (or image) query, ranked in
SEARCH_MODE, ordered by SORT, one per prompt with GROUP=prompt; the server's POST /api/export gives the same as a zip.
"""

import base64
import datetime
import os

import pyarrow.parquet as pq

from config_reader import load_config
from prompt_search.cli import run
from prompt_search.errors import UserError
from prompt_search.layout import exports_folder
from prompt_search.search.api_input import SearchRequest
from prompt_search.search.console import check_prompt, read_image
from prompt_search.search.export import RESULTS_FILE, check_new, exported_files, write_folder
from prompt_search.search.query_run import QueryLimits, run_query
from prompt_search.search.service import DecodeLimits, open_searcher
from prompt_search.settings import ExportSettings, QuerySettings


def main(argv: list[str]) -> None:
    cfg = load_config(argv)
    if cfg.NUM_RESULTS > cfg.MAX_EXPORT:
        raise UserError(f"--NUM_RESULTS={cfg.NUM_RESULTS}: an export holds at most MAX_EXPORT={cfg.MAX_EXPORT} results")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    folder = os.path.abspath(cfg.EXPORT_DIR or os.path.join(exports_folder(cfg.OUT_DIR), stamp))
    check_new(folder)  # said before the search; write_folder checks again when it is done
    query = SearchRequest(index=cfg.EXPORT_INDEX, sort=cfg.SORT, group=cfg.GROUP, num_results=cfg.NUM_RESULTS,
                          mode=None if cfg.SEARCH_MODE == "hybrid" else cfg.SEARCH_MODE)  # hybrid falls back, saying so
    if cfg.EXPORT_QUERY == "text":
        check_prompt(cfg.INPUT_PROMPT)
        query.text = cfg.INPUT_PROMPT
    else:
        read_image(cfg.INPUT_IMG_PATH)  # one line for a missing or unreadable image
        with open(cfg.INPUT_IMG_PATH, "rb") as f:
            query.image = base64.b64encode(f.read()).decode()
    searcher = open_searcher(cfg.OUT_DIR, cfg.IMG_DIR, QuerySettings.of(cfg), DecodeLimits.of(cfg.MAX_DECODE_PIXELS, 1))
    ran = run_query(searcher, query, QueryLimits(cfg.DEDUPE_THRESHOLD, cfg.MAX_NEGATIVES, 2**62))
    for note in ran.answer.notes:
        print(f"({note})")
    write_folder(folder, exported_files(searcher, cfg.EXPORT_INDEX, ran.answer, ExportSettings.of(cfg)))
    results = pq.read_table(os.path.join(folder, RESULTS_FILE), columns=["skipped"]).column("skipped").to_pylist()
    print(f"{folder}: {results.count(None)} of {len(results)} results exported, each image beside its caption "
          f"({os.path.join(folder, cfg.EXPORT_SUBFOLDER)}), every field in {RESULTS_FILE}")
    for reason in sorted(set(results) - {None}):
        print(f"  {results.count(reason)} skipped: {reason}")


if __name__ == "__main__":
    run(main)

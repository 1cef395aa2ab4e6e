"""Seeds up to 2**64 - 1 (ComfyUI's and Fooocus's range) stay exact at every layer: the CSV's row, metadata.parquet
(from a CSV and from a folder), items.arrow, the API's JSON, the page, step 5's output and results.html, and the
seed filter. float64 holds integers exactly only up to 2**53 and int64 only up to 2**63 - 1: the seeds below sit
just past both, where a rounded seed equals its neighbour."""

import csv
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import index_prompts, make_image, run_script
from generations import a1111_text, png
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_gallery import browser  # noqa: F401  (the headless Chromium fixture)
from test_server import post, running_server

from prompt_search.items import ItemTable
from prompt_search.layout import ITEMS_FILE, METADATA_FILE, REJECTS_FILE
from prompt_search.output_sets import local_set
from prompt_search.sources.folder_metadata import extract_folder_metadata
from prompt_search.sources.open_prompts import extract_links

# prompt -> its seed; each pair of neighbours is one seed apart, and equal once rounded to a float64
SEEDS = {"a lighthouse at dawn": 2**53, "a lighthouse at dusk": 2**53 + 1, "a fox in the snow": 2**63 + 5,
         "a tram in the fog": 2**64 - 2, "a kite over the dunes": 2**64 - 1, "a bowl of cherries": 0}
TOP = "a kite over the dunes"  # the query of step 5 and of the page: its own prompt comes first
# raw_discord_data.seed values that are no uint64: the row is kept, its seed left empty
BAD_SEEDS = {"a negative seed": -1, "a seed past 2**64": 2**64, "a fractional seed": 1.5, "a seed as text": "7",
             "a seed as a bool": True, "a seed as a float": 1e19}


def write_csv(path: Path, seeds: dict[str, object]) -> Path:
    """An open-prompts CSV whose rows carry these seeds, their URLs never fetched."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "raw_data"])
        for i, (prompt, seed) in enumerate(seeds.items()):
            raw = {"raw_discord_data": {"seed": seed, "width": 512, "height": 512, "num_step": 50, "cfg_scale": 7.0,
                                        "image_uri": f"http://127.0.0.1:9/{i}.png", "timestamp": 1660000000 + i}}
            writer.writerow([prompt, json.dumps(raw)])  # Python's json writes every integer's digits
    return path


def seeds_by_prompt(table: pa.Table) -> dict[str, int | None]:
    return dict(zip(table.column("prompt").to_pylist(), table.column("seed").to_pylist(), strict=True))


def test_csv_seeds_are_stored_as_exact_uint64_and_others_left_empty(tmp_path):
    extract_links(str(write_csv(tmp_path / "prompts.csv", SEEDS | BAD_SEEDS)), str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out" / METADATA_FILE)
    assert table.schema.field("seed").type == pa.uint64()
    assert seeds_by_prompt(table) == SEEDS | dict.fromkeys(BAD_SEEDS)
    # pandas makes an integer column with nulls float64: its nullable types keep the seeds exact (README, step 1)
    frame = pd.read_parquet(tmp_path / "out" / METADATA_FILE, dtype_backend="numpy_nullable").set_index("prompt")
    assert frame.loc[TOP, "seed"] == 2**64 - 1 and pd.isna(frame.loc["a negative seed", "seed"])


def test_folder_seeds_are_stored_as_exact_uint64(tmp_path):
    """An A1111 `parameters` chunk's seed, as ComfyUI and Fooocus users' A1111-style files carry it."""
    images = tmp_path / "images"
    for number, (prompt, seed) in enumerate({**SEEDS, "a negative seed": -5}.items()):
        png(images / f"{number}.png", {"parameters": a1111_text(prompt, seed)})
    summary = extract_folder_metadata(str(images), str(tmp_path / "out"), "a1111")
    table = pq.read_table(tmp_path / "out" / METADATA_FILE)
    assert table.schema.field("seed").type == pa.uint64()
    assert seeds_by_prompt(table) == {**SEEDS, "a negative seed": None}
    assert summary.rejected == {"a1111_bad_value": 1}
    with open(tmp_path / "out" / REJECTS_FILE, encoding="utf-8", newline="") as f:
        [reject] = csv.DictReader(f)
    assert reject["path"].endswith(f"{len(SEEDS)}.png") and "seed" in reject["detail"] and "-5" in reject["detail"]


def test_a_folder_set_written_with_int64_seeds_is_read_again(tmp_path):
    """A set from before seeds were uint64 is not reused row by row (its seeds may not fit the column)."""
    images, out = tmp_path / "images", tmp_path / "out"
    png(images / "kite.png", {"parameters": a1111_text(TOP, 5)})
    extract_folder_metadata(str(images), str(out), "a1111")
    published = Path(local_set(str(out / "metadata"))) / Path(METADATA_FILE).name
    old = pq.read_table(published)
    old = old.set_column(old.schema.get_field_index("seed"), "seed", old.column("seed").cast(pa.int64()))
    pq.write_table(old, published)
    summary = extract_folder_metadata(str(images), str(out), "a1111")
    assert (summary.read, summary.reused) == (1, 0)
    assert pq.read_table(out / METADATA_FILE).schema.field("seed").type == pa.uint64()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_clip) -> tuple[Path, list[str], str]:
    """Steps 1, 3', 4' and 5 on the CSV of SEEDS: the prompts index, its item table, step 5's output."""
    work = tmp_path_factory.mktemp("seeds")
    write_csv(work / "prompts.csv", SEEDS)
    common = ["--OUT_DIR=out", f"--MODEL={tiny_clip}", "--BATCH_SIZE=4"]
    index_prompts(work, "prompts.csv", *common)
    make_image(work / "query.png", (224, 224))
    query = run_script("test_visual_knn_index.py", *common, "--INPUT_IMG_PATH=query.png", f"--INPUT_PROMPT={TOP}",
                       "--COMPARE_WITH_TORCH=False", f"--NUM_RESULTS={len(SEEDS)}", cwd=work)
    return work, common, query.stdout


@pytest.fixture(scope="module")
def server(indexed):
    work, common, _ = indexed
    with running_server(work, common) as base:
        yield base


def test_item_table_holds_the_exact_seeds(indexed):
    work, _, _ = indexed
    items = ItemTable(str(work / "out" / "knn_indices" / "textual" / ITEMS_FILE))
    assert items.reader.schema.field("seed").type == pa.uint64()
    rows = items.rows(range(len(items)))
    assert {row["prompt"]: row["seed"] for row in rows} == SEEDS


def test_step_5_prints_and_shows_the_exact_seed(indexed):
    work, _, stdout = indexed
    text_query = stdout.split("SIMILAR PROMPTS TO THE TEXT", 1)[1].split("\n\n", 1)[0]
    lines = text_query.splitlines()
    first = next(number for number, line in enumerate(lines) if line.lstrip().startswith("1 "))
    assert repr(TOP) in lines[first] and lines[first + 1].split() == ["seed", str(2**64 - 1), "·", "512×512", "·",
                                                                      "50", "steps", "·", "cfg", "7"]
    page = (work / "out" / "results.html").read_text(encoding="utf-8")
    for seed in SEEDS.values():
        assert f"seed {seed} ·" in page


def test_api_gives_each_seed_as_exact_decimal_text(server):
    answer = post(server, "/api/search", text=TOP, index="prompts", num_results=len(SEEDS), dedupe=False)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert {hit["prompt"]: hit["seed"] for hit in results} == {prompt: str(seed) for prompt, seed in SEEDS.items()}
    assert f'"seed":"{2**64 - 1}"' in answer.text.replace(" ", "")


@pytest.mark.parametrize(("bounds", "expected"), [
    ({"min": 2**64 - 1}, [2**64 - 1]),  # a JSON integer, exact
    ({"min": str(2**53 + 1), "max": str(2**53 + 1)}, [2**53 + 1]),  # decimal text, as the answer gives seeds
    ({"max": 2**53}, [0, 2**53]),
    ({"min": str(2**63 + 5), "max": 2**64 - 2}, [2**63 + 5, 2**64 - 2]),
    ({"min": -5, "max": 2**70}, sorted(SEEDS.values())),  # bounds beyond the column's range
    ({"min": 2**64}, []),
    ({"min": 0.5, "max": float(2**53)}, [2**53]),  # a float bound compared as given, never rounded to the column's
])
def test_seed_filter_compares_exactly(server, bounds, expected):
    answer = post(server, "/api/search", text=TOP, index="prompts", num_results=len(SEEDS), dedupe=False,
                  filters={"seed": bounds})
    assert answer.status_code == 200, answer.text
    assert sorted(int(hit["seed"]) for hit in answer.json()["results"]) == expected


# The page's own request, parsed by the browser's JSON.parse, as the page's script does
FETCH_SEED = """
const [text, done] = arguments;
fetch("/api/search", {method: "POST", headers: {"Content-Type": "application/json"},
                      body: JSON.stringify({text, index: "prompts", num_results: 1})})
  .then((r) => r.json()).then((answer) => done(answer.results[0].seed));
"""


def test_page_shows_the_exact_seed(server, browser):  # noqa: F811
    wait = WebDriverWait(browser, 30)
    browser.get(server + "/")
    browser.find_element(By.CSS_SELECTOR, "input[value=prompts]").click()
    browser.find_element(By.ID, "text").send_keys(TOP)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .prompt")
               and d.find_element(By.CSS_SELECTOR, "#results .prompt").text == TOP)
    assert browser.find_element(By.CSS_SELECTOR, "#results .details").text.startswith(f"seed {2**64 - 1} ·")
    browser.set_script_timeout(20)
    assert browser.execute_async_script(FETCH_SEED, TOP) == str(2**64 - 1)

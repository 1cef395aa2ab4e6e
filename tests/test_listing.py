"""Step 3' listing of distinct prompts: the same items as the Python rule, in first-row order, read batch by batch."""

import os
import random
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_script

from prompt_search.embedding import listing
from prompt_search.embedding import set_writer as embed
from prompt_search.embedding.listing import Listing, prompt_keys, write_listing
from prompt_search.embedding.set_writer import items_digest, save_batch
from prompt_search.embedding.textual import embed_prompts, listing_file
from prompt_search.layout import METADATA_FILE
from prompt_search.settings import EmbedSettings
from prompt_search.sources.metadata_table import PARQUET_OPTIONS, SCHEMA

TRICKY = ["Straße", "STRASSE", "strasse", "ſtraße", "İstanbul", "i̇stanbul", "istanbul", "ISTANBUL", "ıstanbul",
          "ὈΔΥΣΣΕΎΣ", "ὀδυσσεύς", "ὀδυσσεύσ", "ﬁre", "FIRE", "Ꭰꭰ", "ꭰꭰ", "µ", "μ", "ǅ", "ǆ",
          "a\u3000b", "a b", "a\xa0b", "a\u200bb", "a\x1cb", "a\x85b", "a\u2028b", " \t\n", "", None,
          "  padded  ", "padded", "tab\tand\nnewline", "tab and newline", "Full\u3000Width\u3000SPACE", "日本語 の 文",
          "日本語\u3000の\u3000文", "emoji 🐉 dragon", "EMOJI 🐉  DRAGON"]


def python_rule(rows: list[tuple[str, str | None]]) -> tuple[list[tuple[str, str]], int]:
    """The rule the listing follows, row by row: first row of each `" ".join(prompt.split()).casefold()`."""
    seen, items, empty = set(), [], 0
    for row_id, prompt in rows:
        key = " ".join((prompt or "").split()).casefold()
        if not key:
            empty += 1
        elif key not in seen:
            seen.add(key)
            items.append((row_id, prompt))
    return items, empty


def write_metadata(path, prompts: list[str | None], row_group_size: int = 5) -> list[tuple[str, str | None]]:
    """A metadata.parquet in step 1's schema with these prompts, in small row groups; returns its (id, prompt)s."""
    rows = [(f"{i:016x}", prompt) for i, prompt in enumerate(prompts)]
    columns = {"id": pa.array([i for i, _ in rows], pa.string()), "prompt": pa.array(prompts, pa.string())}
    table = pa.table([columns.get(f.name, pa.nulls(len(rows), f.type)) for f in SCHEMA], schema=SCHEMA)
    pq.write_table(table, path, row_group_size=row_group_size, **PARQUET_OPTIONS)
    return rows


def variants(rng: random.Random, count: int) -> list[str | None]:
    """count prompts: the tricky ones and a few words, repeated, re-cased and re-spaced at random."""
    words = ["a", "red", "dragon", "Castle", "ß", "İ", "\xa0", "\u3000", "ς", "night"]
    base = TRICKY + [" ".join(rng.choices(words, k=rng.randint(1, 4))) for _ in range(count // 4)]
    prompts = []
    for _ in range(count):
        prompt = rng.choice(base)
        if prompt and rng.random() < 0.3:
            prompt = rng.choice([str.upper, str.lower, str.title, lambda p: f" {p.replace(' ', '  ')}\t"])(prompt)
        prompts.append(prompt)
    return prompts


@pytest.mark.parametrize(("group_rows", "listing_rows", "threads"), [(3, 5, 1), (64, 7, 3), (1 << 16, 1 << 12, 8)])
def test_listing_is_the_python_rule(tmp_path, monkeypatch, group_rows, listing_rows, threads):
    monkeypatch.setattr(listing, "LISTING_ROWS", listing_rows)  # items listed in batches of this many
    monkeypatch.setattr(listing, "THREADS", threads)  # row groups keyed at once, whatever order they finish in
    rows = write_metadata(tmp_path / "metadata.parquet", variants(random.Random(group_rows), 600), group_rows)
    expected, expected_empty = python_rule(rows)
    count, empty = write_listing(str(tmp_path / "metadata.parquet"), str(tmp_path / "listing.arrow"))
    items = Listing(str(tmp_path / "listing.arrow"))
    assert (count, empty) == (len(expected), expected_empty) and empty > 0
    assert list(items) == expected  # each prompt once, under its first row's id, in first-row order
    assert items.digest() == items_digest(expected)  # a set made before the listing existed is still recognised
    assert items.columns(range(2, 9)) == tuple(map(list, zip(*expected[2:9], strict=True)))
    assert items[-1] == expected[-1]
    with pytest.raises(IndexError):
        items[len(expected)]


def test_keys_match_casefold_and_split_on_every_character():
    """Every code point, alone and between others: Arrow's lower case differs from casefold on some ('ß', 'İ',
    'ς', Cherokee...), and Arrow's idea of white space from str.split's; the keys must not."""
    characters = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    for template in ("{}", "Ab{}Σ  c"):
        prompts = [template.format(c) for c in characters]
        assert prompt_keys(pa.array(prompts)).to_pylist() == [" ".join(p.split()).casefold() for p in prompts]


def test_digest_follows_each_prompt(tmp_path):
    prompts = ["a red dragon", "A Red Dragon", "a castle"]
    write_metadata(tmp_path / "m.parquet", prompts)
    write_listing(str(tmp_path / "m.parquet"), str(tmp_path / "l.arrow"))
    before = Listing(str(tmp_path / "l.arrow")).digest()
    write_metadata(tmp_path / "m.parquet", ["a red  dragon", *prompts[1:]])  # the first row's prompt, re-spaced
    write_listing(str(tmp_path / "m.parquet"), str(tmp_path / "l.arrow"))
    after = Listing(str(tmp_path / "l.arrow"))
    assert after.digest() != before and list(after) == [(f"{0:016x}", "a red  dragon"), (f"{2:016x}", "a castle")]


def read_set(folder):
    ids = [np.load(p) for p in sorted((folder / "ids").glob("*.npy"))]
    vectors = [np.load(p) for p in sorted((folder / "embeddings").glob("*.npy"))]
    return list(np.concatenate(ids)), np.concatenate(vectors)


def test_stopped_prompt_run_resumes_to_the_same_files(tmp_path, tiny_clip, monkeypatch):
    rows = write_metadata(tmp_path / "metadata.parquet", variants(random.Random(7), 120))
    expected, empty = python_rule(rows)
    assert embed_prompts(str(tmp_path / "metadata.parquet"), str(tmp_path / "whole" / "textual_embeddings"),
                         EmbedSettings(tiny_clip, "", "cpu", 4)) == (len(expected), empty)

    saved = []

    def stopped_after_three_batches(*args):
        if len(saved) == 3:
            raise KeyboardInterrupt
        saved.append(args[1])
        save_batch(*args)

    folder = tmp_path / "stopped" / "textual_embeddings"
    monkeypatch.setattr(embed, "save_batch", stopped_after_three_batches)
    with pytest.raises(KeyboardInterrupt):
        embed_prompts(str(tmp_path / "metadata.parquet"), str(folder), EmbedSettings(tiny_clip, "", "cpu", 4))
    monkeypatch.setattr(embed, "save_batch", save_batch)
    assert not (tmp_path / "stopped" / listing_file(str(folder))).exists()  # the listing goes with the run
    embed_prompts(str(tmp_path / "metadata.parquet"), str(folder), EmbedSettings(tiny_clip, "", "cpu", 4))

    whole = tmp_path / "whole" / "textual_embeddings"
    ids, vectors = read_set(folder)
    assert ids == [i for i, _ in expected] == read_set(whole)[0]
    np.testing.assert_allclose(vectors, read_set(whole)[1], atol=1e-6)
    assert (folder / "manifest.json").read_text() == (whole / "manifest.json").read_text()
    assert sorted(p.name for p in (tmp_path / "stopped").iterdir()) == [".textual_embeddings.1", "textual_embeddings"]


def test_past_its_memory_limit_duckdb_spills_and_the_listing_is_the_same(tmp_path, monkeypatch):
    prompts = [f"prompt number {i % 150_000} " + "padding " * 60 for i in range(200_000)]
    rows = write_metadata(tmp_path / "metadata.parquet", prompts, row_group_size=50_000)
    monkeypatch.setattr(listing, "DUCKDB_MEMORY", "64MB")  # under the 150k keys of about 500 bytes: DuckDB spills
    count, empty = write_listing(str(tmp_path / "metadata.parquet"), str(tmp_path / "listing.arrow"))
    assert sorted(os.listdir(tmp_path)) == ["listing.arrow", "metadata.parquet"]  # the spill folder is gone
    assert (count, empty) == (150_000, 0)
    assert Listing(str(tmp_path / "listing.arrow")).digest() == items_digest(python_rule(rows)[0])


def test_a_table_without_prompts_removes_the_prompt_side_of_an_earlier_table(tmp_path, tiny_clip):
    """A folder of images without prompts after one with: its query must not show the earlier folder's prompts."""
    out = tmp_path / "out"
    (out / METADATA_FILE).parent.mkdir(parents=True)
    write_metadata(out / METADATA_FILE, ["a red dragon", "a castle", None] * 3)
    settings = (f"--OUT_DIR={out}", f"--MODEL={tiny_clip}", "--DEVICE=cpu")
    for script in ("extract_textual_clip_embeddings.py", "create_textual_knn_indices.py"):
        run_script(script, *settings, cwd=tmp_path)
    assert (out / "knn_indices" / "textual" / "items.arrow").exists()
    write_metadata(out / METADATA_FILE, [None, "", None])
    result = run_script("extract_textual_clip_embeddings.py", *settings, cwd=tmp_path, check=False)
    assert result.returncode != 0 and "nothing to embed; removed the prompt side made from an earlier table" in (
        result.stdout + result.stderr)
    assert not os.path.lexists(out / "textual_embeddings") and not os.path.lexists(out / "knn_indices" / "textual")
    assert not list(out.glob(".textual_embeddings.*")) and not list((out / "knn_indices").glob(".textual.*"))
    again = run_script("extract_textual_clip_embeddings.py", *settings, cwd=tmp_path, check=False)
    assert again.returncode != 0 and "removed" not in again.stdout + again.stderr  # nothing left to remove

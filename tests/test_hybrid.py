"""Words and meaning ranked together: step 4's keyword index, exact against a brute-force scan of the same prompts;
the keyword and hybrid modes' negatives, filters, paging and pasted prompts; the fused order against a reference
reciprocal rank fusion; and the keyword index replaced and withdrawn with its set."""

import csv
import os
import random
from pathlib import Path

import numpy as np
import pytest
from scaffolding import index_vectors

from prompt_search.errors import UserError
from prompt_search.index import build, keyword_index
from prompt_search.index.keyword_index import COMMON_SHARE
from prompt_search.index.keywords import parse_query, words
from prompt_search.layout import KEYWORDS_FOLDER
from prompt_search.output_sets import current_set, withdraw_set
from prompt_search.search.core import describe, find_hits, open_index
from prompt_search.search.hybrid import FUSION_DEPTH, Wanted, ranked
from prompt_search.search.service import OpenSide, split_negatives

MODEL = "ViT-B/32"  # only its fingerprint is written: the vectors here are random
DIMENSION = 32
# Phrases as Stable Diffusion users write them: weights, brackets, network tags, underscores, accents, CJK
PHRASES = ["greg rutkowski", "by Greg_Rutkowski", "(masterpiece:1.2)", "((best quality))", "[blurry]", "{sharp focus}",
           "<lora:add_detail:0.8>", "<lora:add_detail:0.4>", "alphonse Múcha", "trending on ArtStation", "8k",
           "octane render", "a castle in the clouds", "a cat", "a black cat", "cat girl", "一只猫", "score_9",
           "score_8_up", "portrait of a woman", "hyper-realistic", "cinematic lighting", "BREAK", "(red:0.5) hair",
           "studio ghibli", "by greg rutkowski and alphonse mucha", "neon city at night", "a robot"]
REFERENCE_RRF = 60  # the constant of the reference fusion below, as Cormack et al. give it


def generated_prompts(count: int, seed: int = 30) -> list[str | None]:
    rng = random.Random(seed)
    prompts: list[str | None] = [", ".join(rng.sample(PHRASES, rng.randint(1, 7))) for _ in range(count)]
    prompts[5] = None  # a row without a prompt has no document
    prompts[6] = "!!! ,,, ::"  # nor does one without words
    prompts[7] = prompts[8] = prompts[9] = "(A Castle in the clouds:1.2), by Greg_Rutkowski"  # one prompt, 3 rows
    return prompts


def indexed(out: Path, prompts: list[str | None], seed: int = 0):
    """Step 4's index set over random unit vectors with these prompts and a seed column, opened."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(prompts), DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index_vectors(str(out), "textual", vectors, [f"row-{i}" for i in range(len(prompts))], MODEL,
                  {"prompt": prompts, "seed": list(range(len(prompts)))})
    return open_index(str(out / "knn_indices" / "textual")), vectors


def holding(prompts: list[str | None], phrase: tuple[str, ...]) -> set[int]:
    """Brute force: the rows whose prompt's words hold phrase in order."""
    size = len(phrase)
    found = set()
    for position, prompt in enumerate(prompts):
        row = words(prompt or "")
        if any(tuple(row[start:start + size]) == phrase for start in range(len(row) - size + 1)):
            found.add(position)
    return found


def phrase_queries(prompts: list[str | None], count: int, seed: int = 0) -> list[str]:
    """Quoted phrases: every PHRASE, and runs of 1 to 4 words cut from random prompts as they are written."""
    rng = random.Random(seed)
    queries = [f'"{phrase}"' for phrase in PHRASES]
    texts = [prompt for prompt in prompts if prompt and words(prompt)]
    while len(queries) < count:
        pieces = rng.choice(texts).split()
        start = rng.randrange(len(pieces))
        queries.append('"' + " ".join(pieces[start:start + rng.randint(1, 4)]).replace('"', "") + '"')
    return queries


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    prompts = generated_prompts(3000)
    searched, vectors = indexed(tmp_path_factory.mktemp("hybrid"), prompts)
    return prompts, searched, vectors


@pytest.fixture(scope="module")
def real(tmp_path_factory, csv_1k: Path):
    with open(csv_1k, newline="", encoding="utf-8") as f:
        prompts = [row["prompt"] for row in csv.DictReader(f)]
    searched, _ = indexed(tmp_path_factory.mktemp("hybrid-1k"), prompts)
    return prompts, searched


def check_exact(prompts: list[str | None], searched, queries: list[str]) -> int:
    """Each quoted phrase finds every row whose prompt holds it, and no other (recall and precision 1.0)."""
    nonempty = 0
    for query in queries:
        keywords = parse_query(query)
        expected = holding(prompts, keywords.phrases[0])
        count = searched.keywords.count(keywords)
        positions, _ = searched.keywords.search(keywords, max(count, 1))
        assert count == len(expected) and set(positions.tolist()) == expected, query
        nonempty += bool(expected)
    return nonempty


def test_a_quoted_phrase_finds_exactly_the_prompts_that_hold_it(generated):
    prompts, searched, _ = generated
    assert searched.keywords.documents == len(prompts) - 2  # no document for the rows without words
    assert check_exact(prompts, searched, phrase_queries(prompts, 300)) > 250


def test_a_quoted_phrase_finds_exactly_the_real_prompts_that_hold_it(real):
    prompts, searched = real
    assert check_exact(prompts, searched, phrase_queries(prompts, 300)) > 250


def test_words_are_read_as_stable_diffusion_users_write_them(generated):
    prompts, searched, _ = generated
    tagged = holding(prompts, ("lora", "add", "detail"))
    for query in ("<lora:add_detail>", "<LoRA:add_detail:1.0>", '"lora add detail"'):
        positions, _ = searched.keywords.search(parse_query(f'"{query}"'), len(prompts))
        assert set(positions.tolist()) == tagged, query
    assert tagged and all("lora:add_detail" in prompts[at] for at in tagged)
    # each query finds the prompts that hold it however they wrote it, and no other
    for query, written in (("Greg-Rutkowski", ("greg rutkowski", "greg_rutkowski")), ("MUCHA", ("mucha", "múcha")),
                           ("(masterpiece)", ("masterpiece",)), ("猫", ("猫",)), ("score 8 up", ("score_8_up",))):
        positions, _ = searched.keywords.search(parse_query(f'"{query}"'), len(prompts))
        expected = {at for at, prompt in enumerate(prompts) if any(form in (prompt or "").lower() for form in written)}
        assert expected and set(positions.tolist()) == expected, query
    reversed_count = searched.keywords.count(parse_query('"rutkowski greg"'))  # a phrase is in order
    assert reversed_count == len(holding(prompts, ("rutkowski", "greg"))) < len(holding(prompts, ("greg", "rutkowski")))


def reference_fusion(rankings: list[list[int]]) -> dict[int, float]:
    """Reciprocal rank fusion written out as the paper gives it: sum of 1 / (60 + rank), ranks from 1."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, position in enumerate(ranking, start=1):
            scores[position] = scores.get(position, 0.0) + 1.0 / (REFERENCE_RRF + rank)
    return scores


def keep_even_seeds(positions: np.ndarray) -> np.ndarray:
    return positions % 2 == 0  # the seed column is the row number here


@pytest.mark.parametrize("keep", [None, keep_even_seeds])
def test_the_fused_order_is_reciprocal_rank_fusion_of_the_two_rankings(generated, keep):
    prompts, searched, vectors = generated
    rng = np.random.default_rng(1)
    for text in ("greg rutkowski castle", '"a cat" portrait', "octane render cinematic lighting", "mucha"):
        keywords = parse_query(text)
        assert not searched.keywords.exact(keywords.whole() or ("",)).size  # no row of exactly these words to go first
        vector = vectors[rng.integers(len(vectors))] + 0.3 * rng.standard_normal(DIMENSION).astype(np.float32)
        vector /= np.linalg.norm(vector)
        clip = [hit.position for hit in find_hits(searched, vector, FUSION_DEPTH, 1.0, keep)]
        by_words, _ = searched.keywords.search(keywords, len(prompts))
        by_words = [at for at in by_words.tolist() if keep is None or keep(np.array([at]))[0]][:FUSION_DEPTH]
        expected = reference_fusion([clip, by_words])
        hits = ranked(searched, vector, Wanted(60, 0, 1.0, "hybrid", keywords), keep)
        assert len(hits) == 60 and all(keep is None or hit.position % 2 == 0 for hit in hits)
        assert [hit.score for hit in hits] == pytest.approx(sorted(expected.values(), reverse=True)[:60], abs=1e-7)
        assert all(hit.score == pytest.approx(expected[hit.position], abs=1e-7) for hit in hits), text
        for hit in hits:  # which ranking found each
            assert set(hit.found_by) == {name for name, ranking in (("clip", clip), ("keywords", by_words))
                                         if hit.position in ranking}


@pytest.mark.parametrize("mode", ["hybrid", "keyword"])
@pytest.mark.parametrize("dedupe", [1.0, 0.3])
def test_pages_of_the_fused_list_follow_each_other(generated, mode, dedupe):
    _, searched, vectors = generated
    keywords = parse_query("cat girl castle")
    whole = ranked(searched, vectors[0], Wanted(45, 0, dedupe, mode, keywords), keep_even_seeds)
    pages = [hit for offset in (0, 15, 30)
             for hit in ranked(searched, vectors[0], Wanted(15, offset, dedupe, mode, keywords), keep_even_seeds)]
    assert [hit.position for hit in pages] == [hit.position for hit in whole]
    assert len(whole) == 45 and all(hit.position % 2 == 0 for hit in whole)
    if dedupe < 1:  # folding took place: fewer rows than the undeduplicated list's would shift the pages
        assert any(hit.alike for hit in whole)


def test_negative_phrases_exclude_keyword_matches(generated):
    prompts, searched, vectors = generated
    positive, negatives = split_negatives("a cat -a black cat -greg rutkowski")
    keywords = parse_query(positive, negatives)
    expected = holding(prompts, ("a", "cat")) - holding(prompts, ("a", "black", "cat")) \
        - holding(prompts, ("greg", "rutkowski"))
    by_words = ranked(searched, None, Wanted(1000, 0, 1.0, "keyword", keywords))
    # 'a' and 'cat' are any-of words: rows holding either are found; none with a negative phrase
    assert expected <= {hit.position for hit in by_words}
    for hit in describe(searched, ranked(searched, vectors[0], Wanted(200, 0, 1.0, "hybrid", keywords))) + \
            describe(searched, by_words):
        if "keywords" in hit.found_by:
            prompt_words = " ".join(words(hit.prompt))
            assert "a black cat" not in prompt_words and "greg rutkowski" not in prompt_words, hit.prompt


@pytest.mark.parametrize("mode", ["hybrid", "keyword"])
def test_a_pasted_prompt_finds_the_rows_made_with_it_first(generated, mode):
    prompts, searched, vectors = generated
    pasted = "A castle in the clouds, by greg rutkowski"  # rows 7-9's prompt, written another way
    made_with_it = {at for at, prompt in enumerate(prompts) if words(prompt or "") == words(pasted)}
    hits = ranked(searched, vectors[100], Wanted(10, 0, 1.0, mode, parse_query(pasted)))
    assert {7, 8, 9} <= made_with_it and {hit.position for hit in hits[:len(made_with_it)]} == made_with_it


def test_a_set_without_a_keyword_index_says_how_to_get_one(generated):
    _, searched, vectors = generated
    from dataclasses import replace

    older = replace(searched, keywords=None)  # as a set step 4 built before it made keyword indices
    with pytest.raises(UserError, match="has no keyword index .* rebuild it with step 4"):
        ranked(older, vectors[0], Wanted(5, 0, 1.0, "hybrid", parse_query("cat")))
    assert len(ranked(older, vectors[0], Wanted(5, 0, 1.0, "semantic"))) == 5


def keyword_folders(out: Path) -> list[str]:
    """Every keyword index on disk below out (a published set is a link to its folder: links not followed)."""
    return sorted(os.path.join(folder, KEYWORDS_FOLDER) for folder, subfolders, _ in os.walk(out)
                  if KEYWORDS_FOLDER in subfolders)


def test_the_keyword_index_is_replaced_and_withdrawn_with_its_set(tmp_path, monkeypatch):
    out = tmp_path / "out"
    first, _ = indexed(out, ["a red fox", "a blue whale", "a green frog"])
    assert first.keywords.count(parse_query("fox")) == 1
    # a build that fails while writing the keyword index publishes nothing: the old set answers as before
    monkeypatch.setattr(build, "build_keywords", lambda *args: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        indexed(out, ["a purple owl", "a grey wolf"])
    monkeypatch.undo()
    again = open_index(str(out / "knn_indices" / "textual"))
    assert again.keywords.count(parse_query("fox")) == 1 and again.keywords.count(parse_query("owl")) == 0
    # replaced: the new set's words only; a reader that opened the old set still reads it whole
    second, _ = indexed(out, ["a purple owl", "a grey wolf"])
    assert second.keywords.count(parse_query("owl")) == 1 and second.keywords.count(parse_query("fox")) == 0
    assert first.keywords.count(parse_query("fox")) == 1
    published = current_set(str(out / "knn_indices" / "textual"))
    assert os.path.join(published, KEYWORDS_FOLDER) in keyword_folders(out)
    # withdrawn: no set, no keyword index left behind
    assert withdraw_set(str(out / "knn_indices" / "textual"))
    assert open_index(str(out / "knn_indices" / "textual")) is None and keyword_folders(out) == []


def test_a_word_most_prompts_hold_does_not_match_alone_beside_rarer_ones(tmp_path, monkeypatch):
    prompts = [f"a picture, number {i}" for i in range(100)] + ["a robot", "(a red robot:1.2)", "robot", "the sea"]
    searched, _ = indexed(tmp_path, prompts)
    small = ranked(searched, None, Wanted(1000, 0, 1.0, "keyword", parse_query("a robot")))
    assert {hit.position for hit in small} == holding(prompts, ("a",)) | holding(prompts, ("robot",))  # every word
    monkeypatch.setattr(keyword_index, "COMMON_MIN_DOCUMENTS", 100)  # as in an index of 100,000 rows or more
    common, rare = holding(prompts, ("a",)), holding(prompts, ("robot",))
    assert len(common) > COMMON_SHARE * len(prompts) >= len(rare) > 0
    found = ranked(searched, None, Wanted(1000, 0, 1.0, "keyword", parse_query("a robot")))
    assert {hit.position for hit in found} == rare  # "a" alone no longer makes a row a match: "robot" does
    assert found[0].position == 100  # the row of exactly these words first
    assert searched.keywords.count(parse_query("a")) == len(common)  # alone, it is the query: every row holding it


def test_one_result_per_prompt_sorted_filtered_and_paged(tmp_path):
    prompts = [f"a picture of thing {i % 10}" for i in range(40)]  # 10 prompts, 4 images each: row i is prompt i % 10
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # the prompt_group column as step 4's scores give it (one number per prompt), the seed the row number
    index_vectors(str(tmp_path), "textual", vectors, [f"row-{i}" for i in range(40)], MODEL,
                  {"prompt": prompts, "seed": list(range(40)), "prompt_group": [i % 10 for i in range(40)]})
    opened = OpenSide.of(open_index(str(tmp_path / "knn_indices" / "textual")))
    searched, groups, seeds = opened.searched, opened.columns["prompt_group"], opened.columns["seed"]
    query = vectors[7]
    relevance = [hit.position for hit in ranked(searched, query, Wanted(40))]
    firsts = [at for number, at in enumerate(relevance) if at % 10 not in {p % 10 for p in relevance[:number]}]
    grouped = ranked(searched, query, Wanted(10, group_by=groups.groups))
    assert [hit.position for hit in grouped] == firsts and grouped[0].position == 7  # in relevance order
    assert all(hit.grouped == 3 for hit in grouped)  # each stands for the 3 other images of its prompt
    by_seed = ranked(searched, query, Wanted(10, group_by=groups.groups, sort_by=seeds.sort_values))
    assert [hit.position for hit in by_seed] == list(range(39, 29, -1))  # each prompt's highest seed, highest first
    pages = [hit.position for offset in (0, 4, 8)
             for hit in ranked(searched, query, Wanted(4, offset, group_by=groups.groups, sort_by=seeds.sort_values))]
    assert pages == [hit.position for hit in by_seed]
    even = ranked(searched, query, Wanted(10, group_by=groups.groups, sort_by=seeds.sort_values), keep_even_seeds)
    assert [hit.position for hit in even] == [38, 36, 34, 32, 30]  # filtered first: the even prompts' rows only


def test_images_without_a_prompt_each_stand_alone_when_grouped(tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((12, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    groups = [None if i % 2 else 5 for i in range(12)]  # odd rows: no prompt (step 4 leaves their group null)
    index_vectors(str(tmp_path), "visual", vectors, [f"row-{i}" for i in range(12)], MODEL,
                  {"prompt": ["" if i % 2 else "one prompt" for i in range(12)], "prompt_group": groups})
    opened = OpenSide.of(open_index(str(tmp_path / "knn_indices" / "visual")))
    grouped = ranked(opened.searched, vectors[0], Wanted(12, group_by=opened.columns["prompt_group"].groups))
    assert sorted(hit.position for hit in grouped if hit.position % 2) == [1, 3, 5, 7, 9, 11]
    assert [hit.grouped for hit in grouped if hit.position % 2 == 0] == [5]  # the six of one prompt are one result


def test_step_5_searches_a_set_without_keyword_index_by_clip_and_says_so(generated, capsys):
    from dataclasses import replace

    from prompt_search.search.console import search_queries
    from prompt_search.search.core import Query

    _, searched, vectors = generated
    query = Query("text", "a cat", vectors[0], mode="hybrid", keywords=parse_query("a cat"))
    search_queries([query], {"prompts": replace(searched, keywords=None)}, 5, 1.0)
    assert "the prompts index has no keyword index" in capsys.readouterr().out
    assert [hit.position for hit in query.hits["prompts"]] == [hit.position for hit in
                                                                 ranked(searched, vectors[0], Wanted(5))]

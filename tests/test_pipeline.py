"""Every script in order, as a user runs them: a loopback image server, a tiny CLIP, temp OUT_DIR."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_image, run_script, serve, write_open_prompts_csv
from PIL import Image

from prompt_search.layout import METADATA_FILE

# (size, mode, file name): generated images are rarely square, and come in every mode
SERVED = [((512, 768), "RGB", "a.png"), ((768, 512), "RGBA", "b.png"), ((512, 512), "P", "c.png"),
          ((300, 200), "L", "d.png"), ((512, 512), "CMYK", "e.jpg"), ((1024, 512), "RGB", "f.webp"),
          ((640, 640), "RGB", "g.jpg")]
PROMPTS = ["a blue robot on a red background", "a corgi astronaut on the moon", "portrait of a kangaroo",
           "A Corgi   astronaut on the MOON", "inmates with cow heads", "a castle in the clouds", "neon city",
           "broken file", "missing file", "forbidden file"]
HIT = re.compile(r"^\s+(\d+)\s+([\d.]+)\s+(\S+)\s+'(.*)'\s+(\S*)(?:  \(and (\d+) near-identical\))?$")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_clip):
    """Run steps 1 to 5 and the prompt side; return (work dir, outputs of the query script)."""
    work = tmp_path_factory.mktemp("pipeline")
    served = work / "served"
    for seed, (size, mode, name) in enumerate(SERVED):
        make_image(served / name, size, mode, seed)
    (served / "broken.png").write_bytes((served / "a.png").read_bytes()[:400])
    with serve(served) as base:
        urls = [f"{base}/{name}" for _, _, name in SERVED] + [f"{base}/broken.png", f"{base}/missing.png",
                                                               f"{base}/forbidden/h.png"]
        write_open_prompts_csv(work / "prompts.csv", list(zip(PROMPTS, urls, strict=True)))
        common = ["--OUT_DIR=out", f"--MODEL={tiny_clip}", "--BATCH_SIZE=3", "--NUM_WORKERS=0"]
        run_script("extract_img_links_from_csv.py", "--CSV_FILE=prompts.csv", *common, cwd=work)
        download = run_script("download_images.py", "--DOWNLOAD_THREADS=4", *common, cwd=work)
    visual = run_script("extract_visual_clip_embeddings.py", *common, cwd=work)
    run_script("create_visual_knn_indices.py", *common, cwd=work)
    run_script("extract_textual_clip_embeddings.py", *common, cwd=work)
    run_script("create_textual_knn_indices.py", *common, cwd=work)
    query_image = sorted((work / "out" / "images" / "00000").glob("*.jpg"))[0]
    # semantic: these tests read CLIP's cosines and folding (the hybrid mode: test_hybrid, test_server_modes)
    query = run_script("test_visual_knn_index.py", *common, f"--INPUT_IMG_PATH={query_image}",
                       f"--INPUT_PROMPT={PROMPTS[1]}", "--NUM_RESULTS=4", "--SEARCH_MODE=semantic", cwd=work)
    return work, download.stdout, visual.stdout, query.stdout, query_image


def sections(stdout: str) -> dict[str, list[tuple]]:
    """The query script's result lists: title -> [(rank, score, id, prompt, link, near-identical ones folded in)]."""
    found, title = {}, None
    for line in stdout.splitlines():
        if line.startswith("SIMILAR "):
            title = line.split(" TO THE ")[0][8:].lower() + " for " + line.split(" TO THE ")[1].split()[0].lower()
            found[title] = []
        elif title and (match := HIT.match(line)):
            rank, score, hit_id, prompt, link, alike = match.groups()
            found[title].append((int(rank), float(score), hit_id, prompt, link, int(alike or 0)))
    return found


def test_download_says_what_arrived_and_why_not(pipeline):
    work, download, *_ = pipeline
    assert f"{len(SERVED)} of {len(PROMPTS)} images downloaded" in download
    assert "404" in download and "403" in download and "decoding error" in download.lower()
    sidecars = [json.loads(p.read_text()) for p in (work / "out" / "images" / "00000").glob("*.json")]
    metadata = pd.read_parquet(work / "out" / METADATA_FILE)
    assert {s["id"] for s in sidecars if s["status"] == "success"} <= set(metadata.id)


def test_every_downloaded_image_is_embedded_with_its_own_id(pipeline, tiny_clip):
    import clip

    work, *_ = pipeline
    images = sorted((work / "out" / "images").glob("*/*.jpg"))
    assert len(images) == len(SERVED)
    folder = work / "out" / "visual_embeddings"
    ids = np.concatenate([np.load(p, allow_pickle=False) for p in sorted((folder / "ids").glob("*.npy"))])
    vectors = np.concatenate([np.load(p, allow_pickle=False) for p in sorted((folder / "embeddings").glob("*.npy"))])
    sidecar_ids = [json.loads(p.with_suffix(".json").read_text())["id"] for p in images]
    assert list(ids) == sidecar_ids
    model, preprocess = clip.load(tiny_clip, device="cpu", jit=False)
    with torch.no_grad():
        direct = model.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in images]))
    direct = (direct / direct.norm(dim=-1, keepdim=True)).numpy()
    np.testing.assert_allclose(vectors, direct, atol=1e-5)  # same model, same pixels: float noise only
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_image_query_finds_itself_first_and_text_query_finds_real_rows(pipeline):
    work, _, _, query, query_image = pipeline
    results = sections(query)
    own_id = json.loads(query_image.with_suffix(".json").read_text())["id"]
    first = results["images for image"][0]
    assert first[2] == own_id and first[1] == pytest.approx(1.0, abs=1e-4)
    metadata = pd.read_parquet(work / "out" / METADATA_FILE).set_index("id")
    for _, _, hit_id, prompt, link, _ in results["images for text"]:
        assert metadata.loc[hit_id, "prompt"].startswith(prompt) and metadata.loc[hit_id, "url"] == link
    assert [r[0] for r in results["images for text"]] == [1, 2, 3, 4]


def test_prompt_side_dedupes_and_finds_the_prompt_itself(pipeline):
    _, _, _, query, _ = pipeline
    results = sections(query)
    first = results["prompts for text"][0]
    assert first[3] == PROMPTS[1] and first[1] == pytest.approx(1.0, abs=1e-4)
    for title in ("prompts for text", "prompts for image"):
        shown = [" ".join(hit[3].split()).casefold() for hit in results[title]]
        assert len(shown) == 4 and len(set(shown)) == len(shown)
    assert PROMPTS[3] not in [hit[3] for hit in results["prompts for text"]]  # the same prompt, re-cased


def test_onnx_and_torch_agree(pipeline):
    _, _, _, query, _ = pipeline
    verdicts = [line for line in query.splitlines() if line.startswith("torch CLIP and ONNX CLIP")]
    assert len(verdicts) == 4 and all(line.endswith("the same") for line in verdicts)


def test_prompt_search_works_when_no_image_arrives(tmp_path, tiny_clip):
    prompts = ["a lighthouse in a storm", "a bowl of ramen, studio photo", "a lighthouse in a storm ",
               "an owl wearing a crown"]
    with serve(tmp_path) as base:
        write_open_prompts_csv(tmp_path / "p.csv", [(p, f"{base}/forbidden/{i}.png") for i, p in enumerate(prompts)])
        common = ["--OUT_DIR=out", f"--MODEL={tiny_clip}", "--CSV_FILE=p.csv"]
        run_script("extract_img_links_from_csv.py", *common, cwd=tmp_path)
        download = run_script("download_images.py", "--DOWNLOAD_THREADS=2", *common, cwd=tmp_path)
    assert "0 of 4 images downloaded" in download.stdout and "No image arrived" in download.stdout
    visual = run_script("extract_visual_clip_embeddings.py", *common, cwd=tmp_path, check=False)
    assert visual.returncode == 1 and "no images in out/images" in visual.stderr
    run_script("extract_textual_clip_embeddings.py", *common, cwd=tmp_path)
    run_script("create_textual_knn_indices.py", *common, cwd=tmp_path)
    make_image(tmp_path / "query.png", (300, 200))
    query = run_script("test_visual_knn_index.py", *common, "--INPUT_IMG_PATH=query.png",
                       f"--INPUT_PROMPT={prompts[1]}", cwd=tmp_path)
    results = sections(query.stdout)
    assert set(results) == {"prompts for text", "prompts for image"}
    assert results["prompts for text"][0][3] == prompts[1]
    assert len(results["prompts for image"]) == 3  # three distinct prompts, the repeated one once


def test_query_script_writes_the_gallery(pipeline):
    work, _, _, query, _ = pipeline
    page = (work / "out" / "results.html").read_text()
    assert "all results as a page: out/results.html" in query
    assert page.count('class="card"') == 4 * 4  # 4 results for each of 2 queries x 2 indices
    assert "../out/images/" not in page and 'src="images/00000/' in page  # relative to the page's folder


def test_every_step_with_out_dir_at_a_url_gives_the_local_outputs(tmp_path, tiny_clip, monkeypatch):
    """OUT_DIR and the CSV through fsspec (file://, which the steps' other processes reach too): the same
    tables, images, embeddings, indices and results as with local paths; the sets published by pointer objects."""
    from test_storage import files_at, local_files

    from prompt_search.output_sets import current_set

    monkeypatch.setenv("PROMPT_SEARCH_CACHE", str(tmp_path / "cache"))
    served = tmp_path / "served"
    for seed, (size, mode, name) in enumerate(SERVED[:4]):
        make_image(served / name, size, mode, seed)
    remote = f"file://{tmp_path}/remote"
    stdout = {}
    with serve(served) as base:
        rows = [(prompt, f"{base}/{name}") for prompt, (_, _, name) in zip(PROMPTS[:4], SERVED[:4], strict=True)]
        write_open_prompts_csv(tmp_path / "prompts.csv", [*rows, (PROMPTS[4], f"{base}/missing.png")])
        for out in ("local", remote):
            csv = "prompts.csv" if out == "local" else f"file://{tmp_path}/prompts.csv"
            common = [f"--OUT_DIR={out}", f"--MODEL={tiny_clip}", "--BATCH_SIZE=2", "--NUM_WORKERS=0"]
            for script in ("extract_img_links_from_csv.py", "download_images.py", "extract_visual_clip_embeddings.py",
                           "create_visual_knn_indices.py", "extract_textual_clip_embeddings.py",
                           "create_textual_knn_indices.py"):
                run_script(script, *common, f"--CSV_FILE={csv}", "--DOWNLOAD_THREADS=2", cwd=tmp_path)
            make_image(tmp_path / "query.png", (300, 200))
            stdout[out] = run_script("test_visual_knn_index.py", *common, "--INPUT_IMG_PATH=query.png",
                                     f"--INPUT_PROMPT={PROMPTS[1]}", "--NUM_RESULTS=3", cwd=tmp_path).stdout
    local = tmp_path / "local"
    results = sections(stdout[remote])
    assert results == sections(stdout["local"]) and len(results) == 4 and all(results.values())
    assert not [p for p in (tmp_path / "remote").rglob("*") if p.is_symlink()]  # no links: pointer objects
    for name in ("metadata", "textual_embeddings", "knn_indices/textual"):
        at_url = files_at(current_set(f"{remote}/{name}"))
        assert at_url == local_files(str(local / name)) if name != "knn_indices/textual" else (
            at_url["items.arrow"] == local_files(str(local / name))["items.arrow"])
    images = {name: data for name, data in files_at(f"{remote}/images").items() if not name.endswith(("_stats.json",
                                                                                                         ".parquet"))}
    assert images == {name: data for name, data in local_files(str(local / "images")).items()
                      if not name.endswith(("_stats.json", ".parquet"))} and len(images) == 3 * 4  # jpg, json, txt
    visual = files_at(current_set(f"{remote}/visual_embeddings"))
    # the image paths are URLs now: images.parquet and the manifest's digest of the items differ, not the vectors
    same = [name for name in visual if name.split("/")[0] in ("embeddings", "ids", "hashes", "batches")]
    assert len(same) == 2 * 4
    assert all(visual[name] == (local / "visual_embeddings" / name).read_bytes() for name in same)
    assert (tmp_path / "cache").is_dir() and list((tmp_path / "cache").rglob("results.html"))

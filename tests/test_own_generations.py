"""A folder of one's own generations, every format, through every script: each result shows its own prompt."""

import html

import pytest
from conftest import run_script
from generations import write_folder
from test_pipeline import sections


@pytest.fixture(scope="module")
def own(tmp_path_factory, tiny_clip):
    """Steps 1 (from the folder), 3, 4, 3', 4' and 5; returns (work dir, the prompt of each image, query output)."""
    work = tmp_path_factory.mktemp("own")
    prompts = write_folder(work / "images")
    common = ["--IMG_DIR=images", "--OUT_DIR=out", f"--MODEL={tiny_clip}", "--NUM_WORKERS=0", "--BATCH_SIZE=4"]
    extract = run_script("extract_metadata_from_images.py", *common, cwd=work)
    for script in ("extract_visual_clip_embeddings.py", "create_visual_knn_indices.py",
                   "extract_textual_clip_embeddings.py", "create_textual_knn_indices.py"):
        run_script(script, *common, cwd=work)
    query = run_script("test_visual_knn_index.py", *common, "--INPUT_IMG_PATH=images/comfyui/lora.png",
                       f"--INPUT_PROMPT={prompts['novelai/fox.png']}", f"--NUM_RESULTS={len(prompts)}",
                       "--DEDUPE_THRESHOLD=1", "--COMPARE_WITH_TORCH=False", cwd=work)
    return work, prompts, extract.stdout, query.stdout


def test_step_one_says_what_it_found(own):
    _, prompts, extract, _ = own
    assert f"images: {len(prompts)} images, {len(prompts) - 2} with a prompt" in extract
    assert "comfyui_invalid_json: 1" in extract and "next: python extract_visual_clip_embeddings.py" in extract


def test_every_image_result_shows_its_own_prompt(own):
    work, prompts, _, query = own
    results = sections(query)
    for title in ("images for image", "images for text"):
        hits = results[title]
        assert sorted(hit[2] for hit in hits) == sorted(prompts)
        for _, _, hit_id, prompt, link, _ in hits:
            assert prompt == repr(prompts[hit_id][:80])[1:-1] and link == f"images/{hit_id}"
    assert results["images for image"][0][2] == "comfyui/lora.png"
    page = (work / "out" / "results.html").read_text()
    for prompt in filter(None, prompts.values()):
        assert html.escape(prompt) in page


def test_prompt_index_holds_the_folder_prompts(own):
    _, prompts, _, query = own
    results = sections(query)
    assert results["prompts for text"][0][3] == prompts["novelai/fox.png"]
    distinct = {repr(p[:80])[1:-1] for p in prompts.values() if p}
    assert {hit[3] for hit in results["prompts for text"]} == distinct

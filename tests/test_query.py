"""Step 5's answers to bad queries: one clear message each, no traceback."""

import re

import pytest
from conftest import make_image, run_script
from PIL import Image


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_clip):
    work = tmp_path_factory.mktemp("query")
    for seed in range(3):
        make_image(work / "images" / f"{seed}.png", (96, 128), "RGB", seed)
    common = ["--IMG_DIR=images", f"--MODEL={tiny_clip}", "--NUM_WORKERS=0"]
    run_script("extract_visual_clip_embeddings.py", *common, cwd=work)
    run_script("create_visual_knn_indices.py", cwd=work)
    return work, [*common, "--INPUT_IMG_PATH=images/1.png", "--COMPARE_WITH_TORCH=False"]


def query(indexed, *args):
    work, common = indexed
    return run_script("test_visual_knn_index.py", *common, *args, cwd=work, check=False)


def test_local_folder_hits_show_their_paths(indexed):
    result = query(indexed, "--NUM_RESULTS=3")
    assert result.returncode == 0, result.stderr
    assert "   1  1.0000  1.png  ''  images/1.png" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--INPUT_PROMPT= "], "the text query is empty"),
    (["--INPUT_IMG_PATH=nothere.png"], "query image nothere.png not found"),
    (["--INPUT_IMG_PATH=images/../broken.png"], "cannot be read"),
    (["--OUT_DIR=elsewhere"], "no index in elsewhere/knn_indices"),
])
def test_bad_queries_get_one_clear_message(indexed, args, message):
    (indexed[0] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = query(indexed, *args)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_long_prompt_is_truncated_with_a_note(indexed):
    result = query(indexed, "--INPUT_PROMPT=" + "a very long prompt about a castle " * 20)
    assert result.returncode == 0 and "longer than CLIP's 77 tokens" in result.stdout


@pytest.fixture(scope="module")
def with_duplicates(tmp_path_factory, tiny_clip):
    """20 different pictures, 12 identical all-black ones (the safety filter's), and one re-upload of a picture."""
    work = tmp_path_factory.mktemp("duplicates")
    for seed in range(20):
        make_image(work / "images" / f"{seed:02d}.png", (96, 128), "RGB", seed)
    for n in range(12):
        Image.new("RGB", (512, 512)).save(work / "images" / f"black-{n:02d}.png")
    Image.open(work / "images" / "05.png").save(work / "images" / "05-reupload.jpg", quality=95)
    common = ["--IMG_DIR=images", f"--MODEL={tiny_clip}", "--NUM_WORKERS=0", "--BATCH_SIZE=8"]
    run_script("extract_visual_clip_embeddings.py", *common, cwd=work)
    run_script("create_visual_knn_indices.py", cwd=work)
    return work, [*common, "--COMPARE_WITH_TORCH=False", "--DEDUPE_THRESHOLD=0.999"]


def image_query_hits(stdout: str) -> list[list[str]]:
    """The words of each result line of the image query's section."""
    section = stdout.split("SIMILAR IMAGES TO THE IMAGE", 1)[1].split("\n\n", 1)[0]
    return [line.split() for line in section.splitlines() if re.match(r"\s+\d+\s+\d\.\d{4}\s", line)]


def test_identical_images_are_one_result_saying_how_many(with_duplicates):
    work, common = with_duplicates
    result = run_script("test_visual_knn_index.py", *common, "--INPUT_IMG_PATH=images/black-03.png",
                        "--NUM_RESULTS=6", cwd=work)
    images = image_query_hits(result.stdout)
    assert len(images) == 6
    assert images[0][2].startswith("black-") and images[0][-1] == "near-identical)" and images[0][-2] == "11"
    assert not any(hit[2].startswith("black-") for hit in images[1:])
    page = (work / "outputs" / "results.html").read_text()
    cards = page.split("</h2>", 2)[2]  # the image query's section
    assert cards.count("and 11 near-identical") == 1 and cards.count('<img src="../images/black-') == 1

    reupload = run_script("test_visual_knn_index.py", *common, "--INPUT_IMG_PATH=images/05.png", "--NUM_RESULTS=3",
                          cwd=work)
    hits = image_query_hits(reupload.stdout)
    assert hits[0][2] == "05.png" and hits[0][-3] == "(and" and int(hits[0][-2]) >= 1  # the tiny CLIP's may be more
    assert "05-reupload.jpg" not in [hit[2] for hit in hits]
    every = run_script("test_visual_knn_index.py", *common, "--INPUT_IMG_PATH=images/black-03.png",
                       "--NUM_RESULTS=6", "--DEDUPE_THRESHOLD=1", cwd=work)
    assert "near-identical" not in every.stdout
    assert all(hit[2].startswith("black-") for hit in image_query_hits(every.stdout))


def test_an_index_refuses_query_vectors_of_another_model(with_duplicates, tmp_path):
    from scaffolding import save_random_clip

    work, common = with_duplicates
    other = tmp_path / "other-clip.pt"
    save_random_clip(str(other), seed=1)  # same architecture and dimension: answers would be silent nonsense
    result = run_script("test_visual_knn_index.py", *common, f"--MODEL={other}", "--INPUT_IMG_PATH=images/00.png",
                        cwd=work, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and str(other) in error[0] and common[1].removeprefix("--MODEL=") in error[0]

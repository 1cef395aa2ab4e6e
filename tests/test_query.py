"""Step 5's answers to bad queries: one clear message each, no traceback."""

import pytest
from conftest import make_image, run_script


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

"""Two runs that write one output set at once (issue 25, items 1 and 11): the second is refused in one line while
the first writes, and the set published is the first run's, whole; never a mix of the two.

The first run is stopped (SIGSTOP, PROMPT_SEARCH_STOP_AT_SWAP) at its first swap point, inside its set, while the
second runs to its end; then it goes on. Both are the real scripts in their own processes.
"""

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO, killed_after_batches, make_image, run_script, write_open_prompts_csv

from prompt_search.errors import UserError
from prompt_search.output_sets import current_set, output_set
from prompt_search.settings import EmbedSettings

REFUSED = "is writing this set; run again when it has ended"


def start_stopped(script: str, *args: str, cwd: Path) -> subprocess.Popen:
    """Start a script as run_script does, and return once it has stopped at its first swap point."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1", "PROMPT_SEARCH_STOP_AT_SWAP": "1"}
    process = subprocess.Popen([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"{script} ended before its first swap point: {process.stderr.read()}"
    return process


def go_on(process: subprocess.Popen) -> subprocess.CompletedProcess:
    process.send_signal(signal.SIGCONT)
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_refused_in_one_line(result: subprocess.CompletedProcess, holder: subprocess.Popen) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and REFUSED in result.stderr, result.stderr
    assert f"pid {holder.pid} " in result.stderr
    assert "wrote " not in result.stdout


def set_ids(folder: Path) -> list[str]:
    """The ids of every vector of the embeddings set published at folder, in order."""
    return [i for path in sorted(Path(current_set(str(folder)), "ids").glob("*.npy")) for i in np.load(path)]


def test_a_second_step_3_on_other_images_is_refused_while_the_first_writes(tmp_path, tiny_clip):
    for seed in range(5):
        make_image(tmp_path / "first" / f"a{seed}.png", (64, 64), "RGB", seed)
        make_image(tmp_path / "second" / f"b{seed}.png", (64, 64), "RGB", 10 + seed)
    common = [f"--MODEL={tiny_clip}", "--NUM_WORKERS=0", "--OUT_DIR=out"]
    first = start_stopped("extract_visual_clip_embeddings.py", "--IMG_DIR=first", "--BATCH_SIZE=2", *common,
                          cwd=tmp_path)
    second = run_script("extract_visual_clip_embeddings.py", "--IMG_DIR=second", "--BATCH_SIZE=3", *common,
                        cwd=tmp_path, check=False)
    assert_refused_in_one_line(second, first)
    assert go_on(first).returncode == 0
    assert set_ids(tmp_path / "out" / "visual_embeddings") == [f"a{seed}.png" for seed in range(5)]
    run_script("extract_visual_clip_embeddings.py", "--IMG_DIR=second", "--BATCH_SIZE=3", *common, cwd=tmp_path)
    assert set_ids(tmp_path / "out" / "visual_embeddings") == [f"b{seed}.png" for seed in range(5)]


def test_a_second_step_3_prime_with_another_batch_size_is_refused_while_the_first_writes(tmp_path, tiny_clip):
    write_open_prompts_csv(tmp_path / "in.csv", [(f"prompt number {i}", f"http://127.0.0.1:9/{i}.png")
                                                 for i in range(7)])
    run_script("extract_img_links_from_csv.py", "--CSV_FILE=in.csv", "--OUT_DIR=out", cwd=tmp_path)
    common = [f"--MODEL={tiny_clip}", "--OUT_DIR=out"]
    first = start_stopped("extract_textual_clip_embeddings.py", "--BATCH_SIZE=2", *common, cwd=tmp_path)
    second = run_script("extract_textual_clip_embeddings.py", "--BATCH_SIZE=3", *common, cwd=tmp_path, check=False)
    assert_refused_in_one_line(second, first)
    assert go_on(first).returncode == 0
    assert len(set_ids(tmp_path / "out" / "textual_embeddings")) == 7  # one vector per prompt, none twice


@pytest.mark.parametrize("where", ["local", "url"])
def test_two_step_1_runs_on_one_out_dir_publish_one_whole_set(tmp_path, monkeypatch, where):
    monkeypatch.setenv("PROMPT_SEARCH_CACHE", str(tmp_path / "cache"))
    for rows in (3, 5):
        write_open_prompts_csv(tmp_path / f"in{rows}.csv",
                               [(f"prompt {i}", f"http://127.0.0.1:9/{rows}-{i}.png") for i in range(rows)])
    out = str(tmp_path / "out") if where == "local" else f"file://{tmp_path}/out"
    first = start_stopped("extract_img_links_from_csv.py", "--CSV_FILE=in3.csv", f"--OUT_DIR={out}", cwd=tmp_path)
    second = run_script("extract_img_links_from_csv.py", "--CSV_FILE=in5.csv", f"--OUT_DIR={out}", cwd=tmp_path,
                        check=False)
    assert_refused_in_one_line(second, first)
    finished = go_on(first)
    assert finished.returncode == 0 and "wrote " in finished.stdout, finished.stderr
    published = Path(current_set(f"{out}/metadata").removeprefix("file://"))
    assert pq.read_table(published / "metadata.parquet").column("url").to_pylist() == [
        f"http://127.0.0.1:9/3-{i}.png" for i in range(3)]
    assert not list((tmp_path / "out").glob(".metadata-claim*"))  # the claim went with its run
    run_script("extract_img_links_from_csv.py", "--CSV_FILE=in5.csv", f"--OUT_DIR={out}", cwd=tmp_path)


def test_a_resumed_folder_holding_batches_of_other_inputs_is_not_published(tmp_path, tiny_clip, monkeypatch):
    """A writer that did not claim the set (on storage whose exclusive create is not atomic) left a batch of other
    inputs in the unpublished folder: the run that resumes there refuses to publish it."""
    from test_listing import variants, write_metadata

    from prompt_search.embedding import set_writer as embed
    from prompt_search.embedding.textual import embed_prompts

    write_metadata(tmp_path / "metadata.parquet", variants(random.Random(3), 12))
    _, original = killed_after_batches(monkeypatch, 2)
    folder = tmp_path / "out" / "textual_embeddings"
    with pytest.raises(KeyboardInterrupt):
        embed_prompts(str(tmp_path / "metadata.parquet"), str(folder), EmbedSettings(tiny_clip, "", "cpu", 2))
    monkeypatch.setattr(embed, "save_batch", original)
    unpublished = tmp_path / "out" / ".textual_embeddings.1"
    (unpublished / "batches" / "000000001.json").write_text('{"count": 5, "skipped": []}')  # batch size 5's
    with pytest.raises(UserError, match="holds batches of other inputs beside this run's"):
        embed_prompts(str(tmp_path / "metadata.parquet"), str(folder), EmbedSettings(tiny_clip, "", "cpu", 2))
    assert current_set(str(folder)) is None


def test_the_children_of_a_killed_writer_do_not_keep_its_claim(tmp_path):
    """Step 3's loader processes are forked while the step holds its claim: killed, the step's claim goes with it,
    though its children still run."""
    writer = """if True:
        import multiprocessing, os, signal, sys, time
        from prompt_search.output_sets import output_set
        with output_set(sys.argv[1]):
            child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(600,))
            child.start()
            print(child.pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.Popen([sys.executable, "-c", writer, str(tmp_path / "set")], env=env, text=True,
                              stdout=subprocess.PIPE)
    child = int(killed.stdout.readline())
    try:
        assert killed.wait() == -signal.SIGKILL
        with output_set(str(tmp_path / "set")) as folder:
            Path(folder, "value").write_text("rerun")
        assert Path(current_set(str(tmp_path / "set")), "value").read_text() == "rerun"
    finally:
        os.kill(child, signal.SIGKILL)

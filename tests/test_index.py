"""Step 4: the index and its ids always line up, from one vector up, or the build is refused."""

import numpy as np
import pytest

from prompt_search import index as index_module
from prompt_search.cli import UserError
from prompt_search.embed import save_batch
from prompt_search.index import build_index, check_alignment, embedding_files, index_paths


def fake_embeddings(folder, sizes, dim=16, seed=0):
    """Batches of random unit vectors with ids b<batch>-<row>, as the embeddings step writes them."""
    rng = np.random.default_rng(seed)
    for batch, size in enumerate(sizes):
        save_batch(str(folder), batch, rng.normal(size=(size, dim)), [f"b{batch}-{row}" for row in range(size)], [])


def build(tmp_path, folder):
    paths = index_paths(str(tmp_path / "knn"), "visual")
    return paths, build_index(str(folder), paths, "1G", "2G", 10.0)


@pytest.mark.parametrize("sizes", [[1], [3, 0, 2], [50] * 25])
def test_ids_follow_the_index_order(tmp_path, sizes):
    folder = tmp_path / "emb"
    fake_embeddings(folder, sizes)
    paths, infos = build(tmp_path, folder)
    ids = np.load(paths.ids, allow_pickle=False)
    expected = [f"b{batch}-{row}" for batch, size in enumerate(sizes) for row in range(size)]
    assert list(ids) == expected and infos["nb vectors"] == sum(sizes)
    import faiss

    index = faiss.read_index(paths.index)
    batch = [b for b, size in enumerate(sizes) if size][-1]
    last = np.load(folder / "embeddings" / f"{batch:09d}.npy")
    _, labels = index.search(last, 1)
    assert [ids[label] for label in labels[:, 0]] == [f"b{batch}-{row}" for row in range(len(last))]


def test_shuffled_ids_are_caught(tmp_path):
    folder = tmp_path / "emb"
    fake_embeddings(folder, [30, 30])
    paths, _ = build(tmp_path, folder)
    import faiss

    index = faiss.read_index(paths.index)
    ids = np.load(paths.ids, allow_pickle=False)
    check_alignment(index, ids, embedding_files(str(folder)))
    with pytest.raises(UserError, match="index and ids disagree"):
        check_alignment(index, np.random.default_rng(1).permutation(ids), embedding_files(str(folder)))


def test_stale_ids_file_is_replaced(tmp_path):
    folder = tmp_path / "emb"
    fake_embeddings(folder, [4])
    paths, _ = build(tmp_path, folder)
    np.save(paths.ids, np.array(["stale"] * 4))  # what the reference kept forever
    fake_embeddings(folder, [4, 3], seed=2)
    build(tmp_path, folder)
    assert list(np.load(paths.ids)) == [f"b0-{r}" for r in range(4)] + [f"b1-{r}" for r in range(3)]


def test_refused_build_keeps_the_previous_index(tmp_path, monkeypatch):
    folder = tmp_path / "emb"
    fake_embeddings(folder, [5])
    paths, _ = build(tmp_path, folder)
    before = {p: open(p, "rb").read() for p in (paths.index, paths.ids, paths.infos)}
    fake_embeddings(folder, [5, 5], seed=3)

    def disagree(*args):
        raise UserError("index and ids disagree")

    monkeypatch.setattr(index_module, "check_alignment", disagree)
    with pytest.raises(UserError):
        build(tmp_path, folder)
    assert before == {p: open(p, "rb").read() for p in before}
    assert not list((tmp_path / "knn").glob("*.partial"))


def test_empty_or_incomplete_folder_is_a_clear_error(tmp_path):
    (tmp_path / "emb" / "embeddings").mkdir(parents=True)
    with pytest.raises(UserError, match="no embeddings in"):
        build(tmp_path, tmp_path / "emb")
    fake_embeddings(tmp_path / "emb", [2])
    (tmp_path / "emb" / "ids" / "000000000.npy").unlink()
    with pytest.raises(UserError, match="000000000.npy is missing"):
        build(tmp_path, tmp_path / "emb")

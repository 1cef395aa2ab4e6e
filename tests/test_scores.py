"""Step 4's scores of each image: its adherence to its own prompt (against an independent torch recomputation) and
LAION's aesthetic predictor read from checkpoints in the format LAION publishes."""

from dataclasses import replace

import clip
import numpy as np
import pyarrow as pa
import pytest
import torch
from generations import a1111_text, png
from PIL import Image
from test_live_index import settings_for

from prompt_search.embedding.visual import embed_images
from prompt_search.errors import UserError
from prompt_search.index.aesthetic import load_aesthetic
from prompt_search.index.build import create_index
from prompt_search.items import ItemTable
from prompt_search.layout import ITEMS_FILE, embeddings_set, index_set
from prompt_search.live.compaction import fold
from prompt_search.output_sets import current_set
from prompt_search.sources.folder_metadata import extract_folder_metadata

PROMPTS = ["a red fox in the snow", "A red fox in the  snow", "portrait of a robot", "a castle at night", ""]


def items_of(out) -> dict[str, dict]:
    table = ItemTable(f"{current_set(index_set(str(out), 'visual'))}/{ITEMS_FILE}")
    return {row["id"]: row for row in table.rows(list(range(len(table))))}


def independent_adherence(model_path: str, image_path, prompt: str) -> float:
    """CLIPScore's cosine, by openai/CLIP's own load, preprocess and tokenizer in torch."""
    model, preprocess = clip.load(model_path, device="cpu", jit=False)
    with torch.no_grad():
        image = model.encode_image(preprocess(Image.open(image_path)).unsqueeze(0)).float()
        text = model.encode_text(clip.tokenize([prompt], truncate=True)).float()
    return float(torch.nn.functional.cosine_similarity(image, text)[0])


@pytest.fixture
def folder(tmp_path, tiny_clip):
    images = tmp_path / "images"
    for seed, prompt in enumerate(PROMPTS):
        png(images / f"{seed}.png", {"parameters": a1111_text(prompt, seed)} if prompt else {}, seed)
    return images, tmp_path / "out", settings_for(images, tmp_path / "out", tiny_clip)


def test_adherence_is_clipscore_whether_step_3_embedded_the_prompt_or_step_4_did(folder, tiny_clip):
    images, out, settings = folder
    fold(*settings)  # steps 1, 3, 4, 3', 4': step 4 runs before step 3', so it embeds the prompts itself
    first = items_of(out)
    fold(*settings)  # again: now step 4 reads them from step 3''s set
    second = items_of(out)
    for seed, prompt in enumerate(PROMPTS):
        row_id = f"{seed}.png"
        if not prompt:
            assert first[row_id]["adherence"] is None and second[row_id]["adherence"] is None
            continue
        expected = independent_adherence(tiny_clip, images / row_id, prompt)
        assert first[row_id]["adherence"] == pytest.approx(expected, abs=1e-3), prompt
        assert second[row_id]["adherence"] == pytest.approx(expected, abs=1e-3), prompt
    # one prompt written twice (case and spaces) is one group for one result per prompt; other prompts are others
    groups = [first[f"{seed}.png"]["prompt_group"] for seed in range(len(PROMPTS))]
    assert groups[0] == groups[1] and len({*groups[1:4]}) == 3 and groups[4] is None
    # a new image with a new prompt: step 4 reads the others' vectors from step 3''s set and embeds this one itself
    late = "a lighthouse made of glass"
    png(images / "late.png", {"parameters": a1111_text(late, 99)}, 99)
    fold(*settings)
    third = items_of(out)
    assert third["late.png"]["adherence"] == pytest.approx(independent_adherence(tiny_clip, images / "late.png",
                                                                                 late), abs=1e-3)
    assert {row_id: row["adherence"] for row_id, row in third.items() if row_id != "late.png"} == \
        {row_id: row["adherence"] for row_id, row in second.items()}


def test_a_new_prompt_of_another_model_is_refused_naming_the_images_model(folder, tiny_clip):
    """Step 4 embeds a prompt step 3' has not: with another MODEL than the images', it says which to run with (the
    checkpoint's path, as MODEL takes it) and keeps the published index."""
    images, out, (watch, embed, index) = folder
    fold(watch, embed, index)
    published = current_set(index_set(str(out), "visual"))
    png(images / "late.png", {"parameters": a1111_text("a lighthouse made of glass", 99)}, 99)
    extract_folder_metadata(str(images), str(out), "a1111")
    embed_images(str(images), embeddings_set(str(out), "visual"), embed)
    with pytest.raises(UserError, match=f"not of MODEL ViT-B/32: run with --MODEL={tiny_clip}, or"):
        create_index(str(out), "visual", index, replace(embed, model="ViT-B/32"))
    assert current_set(index_set(str(out), "visual")) == published


def linear_head(dimension: int, seed: int = 0) -> tuple[dict, torch.nn.Module]:
    """LAION-AI/aesthetic-predictor's sa_0_4_vit_*_linear.pth layout (one nn.Linear(d, 1)'s state dict), random
    weights; and the module itself."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(dimension, 1)
    return head.state_dict(), head


def improved_mlp(dimension: int, seed: int = 0) -> tuple[dict, torch.nn.Module]:
    """improved-aesthetic-predictor's MLP as it saves it (`layers.0` to `layers.7`, Dropouts between), random."""
    torch.manual_seed(seed)
    layers = torch.nn.Sequential(torch.nn.Linear(dimension, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                                 torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                                 torch.nn.Linear(64, 16), torch.nn.Linear(16, 1)).eval()
    return {f"layers.{key}": value for key, value in layers.state_dict().items()}, layers


@pytest.mark.parametrize("layout", [linear_head, improved_mlp])
def test_aesthetic_scores_equal_the_predictor_run_in_torch(tmp_path, layout):
    state, module = layout(32)
    path = tmp_path / "aesthetic.pth"
    torch.save(state, path)
    vectors = np.random.default_rng(0).standard_normal((50, 32)).astype(np.float32)
    unit = torch.from_numpy(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    with torch.no_grad():
        expected = module(unit)[:, 0].numpy()
    assert load_aesthetic(str(path), 32).score(vectors) == pytest.approx(expected, abs=1e-5)


def test_step_4_stores_the_aesthetic_score_and_refuses_a_wrong_file_in_one_line(folder, tmp_path):
    images, out, (watch, embed, index) = folder
    path = tmp_path / "aesthetic.pth"
    torch.save(linear_head(32)[0], path)
    fold(watch, embed, replace(index, aesthetic_model=str(path)))
    rows = items_of(out)
    model = load_aesthetic(str(path), 32)
    stored = np.load(f"{current_set(index_set(str(out), 'visual'))}/vectors.npy")
    table = ItemTable(f"{current_set(index_set(str(out), 'visual'))}/{ITEMS_FILE}")
    expected = model.score(stored.astype(np.float32))
    assert [rows[row_id]["aesthetic"] for row_id in table.ids()] == pytest.approx(expected.tolist(), abs=1e-5)
    assert table.reader.schema.field("aesthetic").type == pa.float32()
    prompts_side = ItemTable(f"{current_set(index_set(str(out), 'textual'))}/{ITEMS_FILE}")
    assert "aesthetic" not in prompts_side.reader.schema.names  # a prompt's vector is not scored as a picture
    for content, message in ((linear_head(64)[0], "scores 64-d vectors, but the index holds 32-d"),
                             ({"something": torch.zeros(2)}, "is not LAION's aesthetic predictor"),
                             (None, "is not a PyTorch checkpoint")):
        if content is None:
            path.write_bytes(b"not a checkpoint")
        else:
            torch.save(content, path)
        with pytest.raises(UserError, match=message):
            load_aesthetic(str(path), 32)
    with pytest.raises(UserError, match="not found"):
        load_aesthetic(str(tmp_path / "nothere.pth"), 32)

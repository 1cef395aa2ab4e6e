"""Step 3's GPU input path, run on the CPU (device="cpu": torchvision's CPU JPEG decoder instead of nvJPEG):
the same crops, ids, skips and resume as the CPU path, fallbacks for what the device can't decode."""

import os

import numpy as np
import pytest
import torch
from conftest import make_image
from PIL import Image
from test_embeddings import read_folder

from prompt_search.embedding import gpu_input
from prompt_search.embedding import set_writer as embed
from prompt_search.embedding.gpu_input import Counts, JpegBytes, crop_on_device, device_batch, prefetched
from prompt_search.embedding.set_writer import save_batch
from prompt_search.embedding.visual import embed_images, workers
from prompt_search.pixels import CLIP_PIXELS, crop_rgb, open_rgb
from prompt_search.settings import EmbedSettings

SIZES = [(224, 224), (224, 336), (336, 224), (448, 224), (224, 298), (512, 768), (1000, 700), (150, 90)]


def photo(path, size, seed=0, quality=95, mode="RGB"):
    """A JPEG of smooth colours and grain, like a photo (make_image's stripes are harder on every resampler)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 6, (*size[::-1], 3)).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert(mode).save(path, quality=quality)
    return path


@pytest.fixture
def mixed(tmp_path):
    """A folder with JPEGs of many sizes, other formats, and files nothing can decode."""
    folder = tmp_path / "images"
    for seed, size in enumerate(SIZES):
        photo(folder / f"{seed:02d}.jpg", size, seed)
    photo(folder / "grey.jpg", (300, 224), 20, mode="L")
    photo(folder / "cmyk.jpg", (224, 260), 21, mode="CMYK")  # PIL's way, not the device's
    make_image(folder / "gen.png", (512, 768), "RGB", 22)
    make_image(folder / "pal.png", (240, 224), "P", 23)
    whole = (folder / "00.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "zero.jpg").write_bytes(b"")
    # Garbage in the middle, end marker intact: the loader can't tell, the decoder refuses it.
    (folder / "scrambled.jpg").write_bytes(whole[:400] + bytes(range(256)) * 8 + whole[2448:])
    return folder


def test_device_crops_match_pil_crops(tmp_path):
    paths = [photo(tmp_path / f"{i}.jpg", size, i) for i, size in enumerate(SIZES)]
    samples = [JpegBytes([(p.name, str(p))], CLIP_PIXELS)[0] for p in paths]
    decoded = gpu_input.decode(samples, "cpu", 224, Counts())
    for path, crop in zip(paths, crop_on_device(decoded, CLIP_PIXELS), strict=True):
        expected = crop_rgb(open_rgb(str(path)), 224).transpose(2, 0, 1).astype(int)
        difference = np.abs(crop.numpy().astype(int) - expected)
        assert difference.max() <= 1 and difference.mean() < 0.01, path.name  # rounding, no more


def test_a_batch_keeps_the_items_order_and_skips_what_nothing_decodes(mixed):
    items = [(p.name, str(p)) for p in sorted(mixed.iterdir())]
    counts = Counts()
    samples = [JpegBytes(items, CLIP_PIXELS)[i] for i in range(len(items))]
    pixels, ids, skipped = device_batch(samples, "cpu", CLIP_PIXELS, torch.float32, counts)
    bad = {"cut.jpg", "zero.jpg", "scrambled.jpg"}
    assert ids == [name for name, _ in items if name not in bad]
    assert pixels.shape == (len(ids), 3, 224, 224) and pixels.dtype == torch.float32
    reasons = {os.path.basename(path): reason for path, reason in skipped}
    assert set(reasons) == bad
    for name in bad:  # the CPU path's own reason
        with pytest.raises(OSError) as error:
            open_rgb(str(mixed / name))
        assert reasons[name] == f"{type(error.value).__name__}: {error.value}"
    assert counts.on_device == len(SIZES) + 1  # the JPEGs and the grey one
    assert counts.on_cpu == len(bad | {"cmyk.jpg", "gen.png", "pal.png"})


def test_a_jpeg_the_device_refuses_is_decoded_with_pil(tmp_path, monkeypatch):
    paths = [photo(tmp_path / f"{i}.jpg", (224, 300), i) for i in range(3)]
    refused = paths[1].read_bytes()
    real = gpu_input.decode_jpeg

    def fussy(data, **kwargs):
        if any(bytes(t.numpy()) == refused for t in (data if isinstance(data, list) else [data])):
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, **kwargs)

    monkeypatch.setattr(gpu_input, "decode_jpeg", fussy)
    counts = Counts()
    samples = [JpegBytes([(p.name, str(p))], CLIP_PIXELS)[0] for p in paths]
    pixels, ids, skipped = device_batch(samples, "cpu", CLIP_PIXELS, torch.float32, counts)
    assert ids == ["0.jpg", "1.jpg", "2.jpg"] and not skipped
    assert (counts.on_device, counts.on_cpu, counts.first_on_cpu) == (2, 1, str(paths[1]))
    monkeypatch.setattr(gpu_input, "decode_jpeg", real)
    expected, _, _ = device_batch(samples, "cpu", CLIP_PIXELS, torch.float32, Counts())
    assert (pixels - expected).abs().max() < 0.02  # PIL's crop, within rounding of the device's


def cosines(a, b):
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_gpu_path_on_cpu_gives_the_cpu_paths_embeddings_ids_and_skips(mixed, tmp_path, tiny_clip, capsys):
    out = {}
    for decode, num_workers in (("cpu", 0), ("gpu", 2)):
        written, skipped = embed_images(str(mixed), str(tmp_path / decode),
                                        EmbedSettings(tiny_clip, "", "cpu", 4, num_workers=num_workers, decode=decode))
        out[decode] = written, skipped, read_folder(tmp_path / decode)
        printed = capsys.readouterr().out
        assert f"input path {decode}: {len(os.listdir(mixed))} images in" in printed and "images/s" in printed
        assert "first batch after" in printed
    assert "6 of them decoded with PIL on the CPU" in printed  # cmyk, 2 PNGs and the 3 bad files
    (written, skipped, (ids, vectors)), (gpu_written, gpu_skipped, (gpu_ids, gpu_vectors)) = out["cpu"], out["gpu"]
    assert (gpu_written, gpu_skipped) == (written, skipped) and written == len(SIZES) + 4
    assert list(gpu_ids) == list(ids)
    assert cosines(gpu_vectors, vectors).min() >= 0.9995


def test_gpu_path_resumes_a_stopped_run_to_the_same_result(tmp_path, tiny_clip, monkeypatch):
    for seed in range(9):
        photo(tmp_path / "images" / f"{seed}.jpg", SIZES[seed % 5], seed)
    embed_images(str(tmp_path / "images"), str(tmp_path / "whole"),
                 EmbedSettings(tiny_clip, "", "cpu", 2, num_workers=0, decode="gpu"))

    def stopped_after_two_batches(folder, batch, *args):
        if batch == 2:
            raise KeyboardInterrupt
        save_batch(folder, batch, *args)

    monkeypatch.setattr(embed, "save_batch", stopped_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        embed_images(str(tmp_path / "images"), str(tmp_path / "out"),
                     EmbedSettings(tiny_clip, "", "cpu", 2, num_workers=1, decode="gpu"))
    monkeypatch.setattr(embed, "save_batch", save_batch)
    embed_images(str(tmp_path / "images"), str(tmp_path / "out"),
                 EmbedSettings(tiny_clip, "", "cpu", 2, num_workers=1, decode="gpu"))
    ids, vectors = read_folder(tmp_path / "out")
    whole_ids, whole_vectors = read_folder(tmp_path / "whole")
    assert list(ids) == list(whole_ids) and len(ids) == 9
    np.testing.assert_allclose(vectors, whole_vectors, atol=1e-6)


def test_prefetching_passes_errors_on_and_stops_with_its_caller():
    closed = []

    def batches(fail_at):
        try:
            for i in range(100):
                if i == fail_at:
                    raise ValueError("bad batch")
                yield torch.zeros(1), [str(i)], []
        finally:
            closed.append(fail_at)

    with pytest.raises(ValueError, match="bad batch"):
        list(prefetched(batches(3), 2, "cpu"))
    stream = prefetched(batches(None), 2, "cpu")
    assert next(stream)[1] == ["0"]
    stream.close()  # the caller stops early: the thread ends and closes its source
    assert closed == [3, None]


def test_large_jpegs_decode_at_reduced_scale_to_nearly_the_same_crop(tmp_path):
    path = photo(tmp_path / "big.jpg", (2000, 1500))
    drafted = open_rgb(str(path), draft_size=224)
    assert drafted.size == (1000, 750)  # half scale keeps the shorter side at least 2 x 224
    difference = np.abs(crop_rgb(drafted, 224).astype(int) - crop_rgb(open_rgb(str(path)), 224).astype(int))
    assert difference.mean() < 1.0
    assert open_rgb(str(photo(tmp_path / "small.jpg", (800, 600))), draft_size=224).size == (800, 600)


def test_all_cores_by_default():
    assert workers(-1) == len(os.sched_getaffinity(0)) and workers(3) == 3

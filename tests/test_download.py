"""Step 2's summary: why each image did not arrive, in words, from a real img2dataset run."""

import json

from conftest import make_image, serve, write_open_prompts_csv

from prompt_search.layout import METADATA_FILE
from prompt_search.settings import DownloadSettings
from prompt_search.sources.download import download_images, in_words, print_summary, read_stats
from prompt_search.sources.open_prompts import extract_links

EMPTY = "empty file, 0 bytes (OpenCV("
NOT_AN_IMAGE = "not an image, a truncated one, or a format OpenCV cannot read (Image decoding error)"


def test_empty_and_undecodable_downloads_are_said_in_words(tmp_path, capsys):
    served = tmp_path / "served"
    make_image(served / "good.png", (64, 48))
    (served / "zero.jpg").write_bytes(b"")
    (served / "text.jpg").write_text("<html>not an image</html>\n")
    (served / "truncated.png").write_bytes((served / "good.png").read_bytes()[:100])
    names = ["good.png", "zero.jpg", "text.jpg", "truncated.png", "missing.png"]
    with serve(served) as base:
        write_open_prompts_csv(tmp_path / "p.csv", [(name, f"{base}/{name}") for name in names])
        extract_links(str(tmp_path / "p.csv"), str(tmp_path / "out"))
        images = tmp_path / "out" / "images"
        summary = download_images(str(tmp_path / "out" / METADATA_FILE), str(images),
                                  DownloadSettings(64, "keep_ratio", 2, 1, 5, 0, "files"))
    raw = json.loads(next(images.glob("*_stats.json")).read_text())["status_dict"]
    assert any("!buf.empty()" in status for status in raw)  # what img2dataset itself says of the empty file
    assert (summary.count, summary.successes) == (5, 1)
    failures = dict(summary.failures)
    empty = [reason for reason in failures if reason.startswith(EMPTY)]
    assert len(empty) == 1 and "!buf.empty()" in empty[0] and "\n" not in empty[0]  # the raw text, on one line
    assert failures == {empty[0]: 1, NOT_AN_IMAGE: 2, "HTTP Error 404: File not found": 1}
    capsys.readouterr()
    print_summary(summary, str(images))
    printed = capsys.readouterr().out.splitlines()
    assert f"  2 failed: {NOT_AN_IMAGE}" in printed and f"  1 failed: {empty[0]}" in printed


def test_every_shard_s_statuses_are_added_up_in_words_and_unknown_ones_kept_as_they_are(tmp_path):
    opencv = ("OpenCV({}) /io/opencv/modules/imgcodecs/src/loadsave.cpp:{}: error: (-215:Assertion failed) "
              "!buf.empty() in function 'imdecode_'\n")
    for shard, (version, line, other) in enumerate([("4.11.0", 993, "timed out"), ("4.8.1", 1008, "timed out")]):
        stats = {"count": 4, "successes": 1, "status_dict": {"success": 1, opencv.format(version, line): 2, other: 1}}
        (tmp_path / f"{shard:05d}_stats.json").write_text(json.dumps(stats))
    summary = read_stats(str(tmp_path))
    assert (summary.count, summary.successes) == (8, 2)
    assert summary.failures["timed out"] == 2
    empty = {reason: count for reason, count in summary.failures.items() if reason.startswith(EMPTY)}
    assert sorted(empty.values()) == [2, 2] and all("OpenCV(4." in reason for reason in empty)  # one per message
    assert in_words("OpenCV(4.11.0) other\n") == "OpenCV could not read the image (OpenCV(4.11.0) other)"
    assert in_words("HTTP Error 403: Forbidden") == "HTTP Error 403: Forbidden"

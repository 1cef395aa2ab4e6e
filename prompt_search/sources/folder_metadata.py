"""Step 1 for a folder of one's own generations: the prompt and settings inside each image file, as a table.

Writes the output set out_dir/metadata (published as one: see output_sets.py), as step 1 does for a CSV:
  metadata.parquet  one row per image step 3 embeds, under the same id (image_files.list_images): SCHEMA
  rejects.csv       path, reason, detail for every image whose metadata could not be read (it still has its row,
                    with what could be read, and an empty prompt at worst), or that step 3 refuses (duplicate id,
                    not a regular file), and every folder that could not be listed (image_files.list_images)
  stamps.parquet    id, stamp: each row's image and .txt sizes and modification times, with the folder and the
                    preferred format in its schema's metadata. A rerun on the same folder and setting re-reads only
                    the images whose stamp changed or that are new, and takes the other rows from the current set.
The texts are read here (PNG text chunks, EXIF, the .txt beside the image); image_metadata.py parses them.
"""

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, PngImagePlugin
from tqdm import tqdm

from prompt_search import layout
from prompt_search.errors import UserError
from prompt_search.layout import METADATA_FILE, METADATA_SET, REJECTS_FILE
from prompt_search.output_sets import local_set, output_set
from prompt_search.pixels import UNREADABLE, ImageTooLarge, open_image
from prompt_search.sources import png_chunks
from prompt_search.sources.image_files import list_images, path_from_text, print_unreadable_folders
from prompt_search.sources.image_metadata import FOOOCUS_SCHEMES, FORMAT_TEXTS, parse_metadata
from prompt_search.sources.metadata_table import PARQUET_OPTIONS
from prompt_search.sources.metadata_table import SCHEMA as CSV_SCHEMA
from prompt_search.sources.stealth_pnginfo import read_stealth
from prompt_search.storage import is_url

# Step 1's columns where they mean the same (id, prompt, width, height, seed, cfg_scale, num_steps), so that
# the index's item table and the query show a folder's rows as a CSV's; then what only image files carry.
SCHEMA = pa.schema([
    CSV_SCHEMA.field("id"),  # the image's path below IMG_DIR, or its img2dataset sidecar's id, as in step 3
    CSV_SCHEMA.field("prompt"),  # "" when the file carries none
    ("negative_prompt", pa.string()),
    *(CSV_SCHEMA.field(name) for name in ("width", "height", "seed", "cfg_scale", "num_steps")),
    ("sampler", pa.string()),
    ("model", pa.string()),  # the checkpoint's name
    ("model_hash", pa.string()),
    ("tool", pa.string()),  # the formats found (image_metadata.TOOLS), the preferred first; null when none
])
EXIF_IFD, USER_COMMENT, MAKER_NOTE = 0x8769, 0x9286, 0x927C  # Fooocus's JPEG/WebP: its scheme in the MakerNote
# IFD0's Model, Make and ImageDescription: ComfyUI's WebP writes "prompt:{json}" and "workflow:{json}" there.
COMFYUI_EXIF_TAGS = (0x0110, 0x010F, 0x010E)
MAX_TXT_BYTES = 1 << 20  # a .txt beside an image larger than this is not generation parameters
ROW_GROUP_ROWS = 65_536
STAMPS_FILE = os.path.basename(layout.STAMPS_FILE)
STAMPS_KEY = b"prompt_search"  # the stamps' schema metadata: the folder and setting the rows were read with


@dataclass
class FolderSummary:
    images: int = 0
    prompts: int = 0  # images with a prompt
    tools: Counter = field(default_factory=Counter)  # images by the formats found
    rejected: Counter = field(default_factory=Counter)  # problems by reason
    read: int = 0  # images whose metadata was read: new, changed, or every one on a first run
    reused: int = 0  # rows taken unchanged from the current set
    removed: int = 0  # rows of the current set whose image is gone


@dataclass
class PreviousRows:
    """The current metadata set's rows, where it was read from the same folder with the same setting."""
    table: pa.Table
    position: dict[str, int]  # id -> row
    stamps: list[str]
    problems: dict[str, list[tuple[str, str]]]  # path -> its rejects, duplicates aside (listed anew each run)


def file_stamp(path: str) -> str:
    """What changes when an image or the .txt beside it is rewritten: their sizes and modification times."""
    stamps = []
    for name in (path, os.path.splitext(path)[0] + ".txt"):
        try:
            stat = os.stat(name)
        except FileNotFoundError:
            stamps.append("-")
        else:
            stamps.append(f"{stat.st_size}:{stat.st_mtime_ns}")
    return " ".join(stamps)


def read_with(out_dir: str) -> dict | None:
    """The settings (folder, preferred format) the published metadata set was read with; None when it was not read
    from a folder."""
    folder = local_set(os.path.join(out_dir, METADATA_SET))
    stamps_path = os.path.join(folder or "", STAMPS_FILE)
    if not folder or not os.path.isfile(stamps_path):
        return None
    return json.loads((pq.read_schema(stamps_path).metadata or {}).get(STAMPS_KEY, b"{}"))


def previous_rows(out_dir: str, settings: dict) -> PreviousRows | None:
    """The current set's rows, if they were read with these settings (folder, preferred format), else None."""
    folder = local_set(os.path.join(out_dir, METADATA_SET))
    stamps_path = os.path.join(folder or "", STAMPS_FILE)
    if not folder or not os.path.isfile(stamps_path):
        return None  # no set yet, or one step 1 made from a CSV
    stamps = pq.read_table(stamps_path)
    if json.loads((stamps.schema.metadata or {}).get(STAMPS_KEY, b"{}")) != settings:
        return None
    table = pq.read_table(os.path.join(folder, os.path.basename(METADATA_FILE)))
    if table.schema != SCHEMA:  # written with other columns (seeds as int64 before): its rows may not fit SCHEMA
        return None
    ids = table.column("id").to_pylist()
    if ids != stamps.column("id").to_pylist():
        return None  # not one set: read everything again
    problems: dict[str, list[tuple[str, str]]] = {}
    with open(os.path.join(folder, os.path.basename(REJECTS_FILE)), encoding="utf-8", newline="") as f:
        for reject in csv.DictReader(f):
            if reject["reason"] != "duplicate_id":
                problems.setdefault(reject["path"], []).append((reject["reason"], reject["detail"]))
    return PreviousRows(table, {item_id: i for i, item_id in enumerate(ids)}, stamps.column("stamp").to_pylist(),
                        problems)


def read_texts(path: str) -> tuple[dict[str, str | bytes], tuple[int, int]]:
    """The texts an image file carries (for image_metadata.parse_metadata), and its size in pixels.

    Only the headers are read: PNG text chunks (before the image data, where the generators write them, or after
    it, where re-encoders move them: png_chunks.py), EXIF, and the .txt beside the image; the pixels only of a PNG
    that holds no format's text, and only the first rows unless they carry a stealth signature
    (stealth_pnginfo.py). Raises what PIL raises on a file it cannot open.
    """
    with open_image(path) as image:
        is_png = image.format == "PNG"
        chunks = {**(png_chunks.after_image(path) if is_png else {}), **image.info}  # those before the pixels first
        texts: dict[str, str | bytes] = {key: _chunk_text(value) for key, value in chunks.items()
                                         if isinstance(key, str) and isinstance(value, str)}
        exif = _png_exif(chunks.get("exif")) if is_png else image.getexif()  # a PNG's getexif decodes its pixels
        for ifd in (exif.get_ifd(EXIF_IFD), exif):  # the EXIF sub-IFD, where it belongs, or IFD0, where some put it
            comment = ifd.get(USER_COMMENT)
            if comment and "UserComment" not in texts:
                texts["UserComment"] = comment if isinstance(comment, bytes) else str(comment).encode()
            if _exif_text(ifd.get(MAKER_NOTE, "")) in FOOOCUS_SCHEMES:  # a camera's MakerNote is its own binary
                texts.setdefault("fooocus_scheme", _exif_text(ifd[MAKER_NOTE]))
        for tag in COMFYUI_EXIF_TAGS:
            name, sep, rest = str(exif.get(tag, "")).partition(":")
            if sep and name in ("prompt", "workflow"):
                texts.setdefault(name, rest)
        size = image.size
    sidecar = os.path.splitext(path)[0] + ".txt"
    if os.path.isfile(sidecar) and os.path.getsize(sidecar) <= MAX_TXT_BYTES:
        with open(sidecar, "rb") as f:
            texts[".txt"] = f.read().decode("utf-8", errors="replace")
    if is_png and not any(key in texts for key in FORMAT_TEXTS):
        texts.update(read_stealth(path))
    return texts, size


def _png_exif(raw: object) -> Image.Exif:
    exif = Image.Exif()
    if isinstance(raw, bytes):
        exif.load(raw)
    return exif


def _exif_text(value: str | bytes) -> str:
    return (value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)).strip("\0 ")


def _chunk_text(value: str) -> str:
    """A PNG text chunk's text. tEXt is Latin-1 by the standard, yet some tools write UTF-8 bytes into it: those
    read back as UTF-8. iTXt (what Pillow writes when the text isn't Latin-1) is UTF-8 already."""
    if isinstance(value, PngImagePlugin.iTXt):
        return str(value)
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def image_row(path: str, preferred: str) -> tuple[dict, list[tuple[str, str]]]:
    """One image's row of SCHEMA (without its id) and its problems; a file PIL cannot open has an empty row."""
    try:
        texts, (width, height) = read_texts(path)
    except UNREADABLE as error:
        reason = "too_large" if isinstance(error, ImageTooLarge) else "unreadable_image"
        return {"prompt": ""}, [(reason, f"{type(error).__name__}: {error}"[:200])]
    row, problems = parse_metadata(texts, preferred)
    row["width"] = row["width"] or width  # the file's own size when no format says the generation's
    row["height"] = row["height"] or height
    return row, problems


def extract_folder_metadata(img_dir: str, out_dir: str, preferred: str) -> FolderSummary:
    """Read the metadata of every image step 3 would embed below img_dir into out_dir's metadata set, reusing
    the current set's rows of unchanged images (see STAMPS_FILE)."""
    if is_url(img_dir):  # it reads each file's size and mtime, and PIL opens each file many times
        raise UserError(f"IMG_DIR {img_dir}: this step reads a folder on this machine; copy the images here or mount "
                        "their storage, and give its local path (step 3 and the others then read the same folder)")
    if not os.path.isdir(img_dir):
        raise UserError(f"image folder {img_dir} not found: set --IMG_DIR to the folder of your images")
    items, refused, _ = list_images(img_dir)  # step 3 reports the sidecars' problems
    print_unreadable_folders(refused)
    if not items:
        raise UserError(f"no images in {img_dir}")
    settings = {"img_dir": os.path.abspath(img_dir), "preferred": preferred}
    previous = previous_rows(out_dir, settings)
    summary = FolderSummary(images=len(items))
    stamps_schema = pa.schema([("id", pa.string()), ("stamp", pa.string())],
                              metadata={STAMPS_KEY: json.dumps(settings)})
    with (
        output_set(os.path.join(out_dir, METADATA_SET)) as folder,
        open(os.path.join(folder, os.path.basename(REJECTS_FILE)), "w", encoding="utf-8", newline="") as rejects_file,
        pq.ParquetWriter(os.path.join(folder, os.path.basename(METADATA_FILE)), SCHEMA, **PARQUET_OPTIONS) as table,
        pq.ParquetWriter(os.path.join(folder, STAMPS_FILE), stamps_schema) as stamps_table,
    ):
        rejects = csv.writer(rejects_file)
        rejects.writerow(["path", "reason", "detail"])
        rows: list[dict | int] = []  # a row read now, or the position of a row of the previous set
        stamps: list[str] = []

        def write_rows() -> None:
            reused = iter(previous.table.take([r for r in rows if isinstance(r, int)]).to_pylist() if previous else [])
            chunk = [next(reused) if isinstance(r, int) else r for r in rows]
            for row in chunk:
                summary.prompts += bool(row["prompt"])
                summary.tools[row.get("tool") or "none"] += 1
            table.write_table(pa.Table.from_pylist(chunk, SCHEMA))
            stamps_table.write_table(pa.table({"id": [row["id"] for row in chunk], "stamp": stamps},
                                              schema=stamps_schema))
            rows.clear()
            stamps.clear()

        for item_id, path in tqdm(items, unit="img", desc="metadata", disable=None):
            stamp = file_stamp(path_from_text(path))
            position = previous.position.get(item_id) if previous else None
            if position is not None and previous.stamps[position] == stamp:
                rows.append(position)
                problems = previous.problems.get(path, [])
                summary.reused += 1
            else:
                row, problems = image_row(path_from_text(path), preferred)
                rows.append({"id": item_id, **row})
                summary.read += 1
            stamps.append(stamp)
            summary.rejected.update(reason for reason, _ in problems)
            rejects.writerows((path, reason, detail) for reason, detail in problems)
            if len(rows) == ROW_GROUP_ROWS:
                write_rows()
        if rows:
            write_rows()
        rejects.writerows(refused)
        summary.rejected.update(code for _, code, _ in refused)
    if previous:
        summary.removed = len(previous.position.keys() - {item_id for item_id, _ in items})
    return summary


def print_summary(summary: FolderSummary, img_dir: str, out_dir: str) -> None:
    print(f"{img_dir}: {summary.images} images, {summary.prompts} with a prompt; metadata read from "
          f"{summary.read} new or changed images, reused for {summary.reused}, {summary.removed} removed")
    for tool, count in summary.tools.most_common():
        print(f"  {tool}: {count}")
    problems = sum(summary.rejected.values())
    if problems:
        print(f"{problems} problems (the images are still indexed), by reason:")
        for reason, count in summary.rejected.most_common():
            print(f"  {reason}: {count}")
    for name in (METADATA_FILE, REJECTS_FILE):
        print(f"wrote {os.path.join(out_dir, name)}")

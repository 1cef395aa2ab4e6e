"""The metadata table, OUT_DIR/metadata/metadata.parquet: its columns and how it is written, whichever step 1
made it (from open-prompts' CSV, or from the files of a folder of images)."""

import pyarrow as pa

# Dictionaries and min/max statistics only where values repeat or can be ranged: half the time to write.
_NUMBERS = ["width", "height", "seed", "cfg_scale", "num_steps", "num_generations", "is_grid", "timestamp", "csv_line"]
PARQUET_OPTIONS = dict(compression="zstd", use_dictionary=["prompt", "modifiers", *_NUMBERS], write_statistics=_NUMBERS)

SCHEMA = pa.schema([
    ("id", pa.string()),  # blake2b(url) with an 8-byte digest, as 16 hex digits: stable whatever the row order
    ("url", pa.string()),  # the image downloaded (see open_prompts.choose_url)
    ("prompt", pa.string()),
    ("discord_url", pa.string()),
    ("thumbnail_url", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("seed", pa.uint64()),  # exact: ComfyUI and Fooocus draw seeds up to 2**64 - 1, which no float64 or int64 holds
    ("cfg_scale", pa.float32()),
    ("num_steps", pa.int32()),
    ("num_generations", pa.int32()),
    ("is_grid", pa.bool_()),
    ("timestamp", pa.timestamp("s", tz="UTC")),
    ("modifiers", pa.list_(pa.string())),
    ("csv_line", pa.int64()),  # line in the CSV where the row starts
])

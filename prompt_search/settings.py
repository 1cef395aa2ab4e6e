"""Each step's settings as one frozen object, built by the scripts from config.py and its --NAME=value overrides
(config_reader.load_config): nothing in the package reads config.py itself.

A field is named as its constant of config.py in lower case, and documented there; `of` picks a step's fields from
everything load_config read. The defaults serve callers that build one by hand (tests, benchmarks, a Spark driver
of one's own: README, Beyond one machine): all in this process, no Spark, the index of step 4's own choice tuned to
config.py's recall target.
"""

from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import TypeVar

S = TypeVar("S", bound="StepSettings")


@dataclass(frozen=True)
class StepSettings:
    @classmethod
    def of(cls: type[S], config: SimpleNamespace) -> S:
        """The step's fields, each from config's constant of the same name in upper case."""
        return cls(**{field.name: getattr(config, field.name.upper()) for field in fields(cls)})


@dataclass(frozen=True)
class DownloadSettings(StepSettings):
    """Step 2: img2dataset's options."""

    image_size: int
    resize_mode: str
    download_threads: int
    download_processes: int
    download_timeout: int
    download_retries: int
    output_format: str
    distributor: str = "local"
    spark_master: str = ""


@dataclass(frozen=True)
class EmbedSettings(StepSettings):
    """Steps 3 and 3': the model, where it runs, and how the images reach it (num_workers and decode: step 3 only)."""

    model: str
    model_dir: str
    device: str
    batch_size: int
    num_workers: int = 0
    decode: str = ""
    distributor: str = "local"
    spark_master: str = ""


@dataclass(frozen=True)
class IndexSettings(StepSettings):
    """Steps 4 and 4': the index's memory and query-time budgets, its kind and the recall its search is tuned to."""

    max_index_memory: str
    current_memory_available: str
    max_index_query_time_ms: float
    distributor: str = "local"
    spark_master: str = ""
    index_key: str = ""
    index_recall: float = 0.995
    aesthetic_model: str = ""  # step 4: LAION's aesthetic predictor scoring each image (index/aesthetic.py); "": none


@dataclass(frozen=True)
class QuerySettings(StepSettings):
    """Step 5 and the server's queries: the model the indices hold, and its ONNX sessions."""

    model: str
    model_dir: str
    quantize_int8: bool
    query_threads: int


@dataclass(frozen=True)
class WatchSettings(StepSettings):
    """serve.py --WATCH: the folder kept in step with, and how its changes become new published sets."""

    img_dir: str
    out_dir: str
    preferred_metadata: str
    watch_poll_s: float
    watch_compact_items: int
    batch_size: int


@dataclass(frozen=True)
class ExportSettings(StepSettings):
    """export_results.py and POST /api/export: a query's results as a training set (search/export.py); images
    fetched from their links with step 2's timeout and retries."""

    max_export: int
    export_subfolder: str
    export_strip_weights: bool
    download_timeout: int = 10
    download_retries: int = 0

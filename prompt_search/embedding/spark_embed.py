"""Steps 3 and 3' on Spark: the batches of set_writer.embed_items computed in Spark tasks, the same files as a
local run.

The batch numbering is a local run's (set_writer.batch_ranges over the whole item list, in its order): each task takes
a run of consecutive batches and writes each one with save_batch into the unpublished set folder, which must be
storage every executor reaches. A task that Spark retries (its worker killed, its executor lost) first reads which
of its batches are complete and computes only the others. Back on the driver, embed_items writes skipped.csv and
the tables and publishes the set, as it does after a local run.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np

from prompt_search.embedding.reuse import Batch
from prompt_search.embedding.set_writer import resume_folder, row_hashes, save_batch
from prompt_search.spark import ship_code

# encode(items, ranges, settings=): a functools.partial of visual.encode_images or textual.encode_prompts, its
# settings and other arguments bound (the task replaces the device in its settings)
Encode = Callable[..., Iterator[Batch]]
# (batch, start, stop)s, their items, offset, the items' content hashes (reuse.py) or None
Task = tuple[list[tuple[int, int, int]], list[tuple[str, str]], int, list[str] | None]


def embed_on_spark(spark, items: Sequence[tuple[str, str]], encode: Encode, folder: str, manifest: dict,
                   todo: list[tuple[int, range]], hashes: Sequence[str] | None = None) -> None:
    """embed_items' distribute: todo's batches in one task per core Spark offers, each task a run of batches.

    hashes: each item's content hash, saved with its vector as a local run saves it (for the next run's reuse).
    """
    ship_code(spark)
    context = spark.sparkContext
    tasks = [_task(items, hashes, [todo[i] for i in chunk])
             for chunk in np.array_split(np.arange(len(todo)), min(len(todo), context.defaultParallelism))]
    context.setJobDescription(f"prompt-search step 3: {len(todo)} batches of {folder}")
    computed = context.parallelize(tasks, len(tasks)).map(lambda task: embed_task(folder, manifest, encode, task))
    computed.collect()


def _task(items: Sequence[tuple[str, str]], hashes: Sequence[str] | None, batches: list[tuple[int, range]]) -> Task:
    """A task's batches, and only the items they cover (offset: the index of the first in the whole list)."""
    offset, stop = batches[0][1].start, batches[-1][1].stop
    return ([(batch, r.start, r.stop) for batch, r in batches], list(items[offset:stop]), offset,
            None if hashes is None else list(hashes[offset:stop]))


def embed_task(folder: str, manifest: dict, encode: Encode, task: Task) -> int:
    """Run in a Spark task: compute and save the task's batches that are not complete yet; return how many."""
    batches, items, offset, hashes = task
    done = resume_folder(folder, manifest)  # those an earlier attempt of this task saved
    todo = [(batch, range(start - offset, stop - offset)) for batch, start, stop in batches if batch not in done]
    if todo:
        settings = encode.keywords["settings"]
        encoded = encode(items, [r for _, r in todo], settings=replace(settings, device=_task_device(settings.device)))
        for (batch, indices), (vectors, ids, skipped) in zip(todo, encoded, strict=True):
            save_batch(folder, batch, vectors, ids, skipped, row_hashes(items, hashes, indices, ids))
    return len(todo)


def _task_device(device: str) -> str:
    """DEVICE "" on an executor that Spark gave a GPU (spark.task.resource.gpu.amount): that GPU, so that tasks
    sharing a machine do not all pick cuda:0."""
    from pyspark import TaskContext

    gpus = TaskContext.get().resources().get("gpu") if not device else None
    return f"cuda:{gpus.addresses[0]}" if gpus else device

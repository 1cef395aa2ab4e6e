"""The SparkSession steps 2-4 run on when DISTRIBUTOR is "pyspark" (README: Beyond one machine).

A session that already exists is used as it is: one the user built before calling a step, or the one
spark-submit's configuration makes. Otherwise one is made here and stopped when the step ends:
  - on a local master (the default when not under spark-submit): every task on this machine's cores,
    bound to loopback only, its Python workers run by this very interpreter;
  - on the master SPARK_MASTER names: what that cluster's configuration says.
"""

import glob
import os
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager

LOCAL_ATTEMPTS = 4  # attempts per task on a local master: Spark's local[N] gives a task one, a cluster 4
DRIVER_MEMORY = "2g"  # img2dataset's and autofaiss's own sessions ask for 16g; this driver only schedules and merges
LOOPBACK = "127.0.0.1"


def local_master(cores: str = "*") -> str:
    """A local master that retries a failed task, as a cluster would (local[N,F]: N cores, F attempts)."""
    return f"local[{cores},{LOCAL_ATTEMPTS}]"


def under_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands its gateway to the script through this variable."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


@contextmanager
def spark_session(master: str = "") -> Iterator[object]:
    """The active SparkSession, else a new one on master ("" = spark-submit's, or local_master()), stopped after."""
    from pyspark.sql import SparkSession  # heavy import, only with DISTRIBUTOR=pyspark

    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    builder = SparkSession.builder.appName("prompt-search")
    if not under_spark_submit():
        master = master or local_master()
        builder = builder.master(master).config("spark.driver.memory", DRIVER_MEMORY)
    if master.startswith("local"):
        builder = _on_loopback(builder)
    spark = builder.getOrCreate()
    print(f"on Spark {spark.sparkContext.master}, web UI {spark.sparkContext.uiWebUrl}")
    try:
        yield spark
    finally:
        spark.stop()


def _on_loopback(builder):
    """A local Spark binds to loopback only: else it swaps a loopback hostname for the machine's other interface.

    Its Python workers must be this interpreter: else they start a plain python3 that lacks this venv's packages.
    Both are read when the JVM and the workers start, so they go in the environment before getOrCreate.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return builder.config("spark.driver.host", LOOPBACK).config("spark.driver.bindAddress", LOOPBACK)


@contextmanager
def session_for(distributor: str, master: str = "") -> Iterator[object | None]:
    """spark_session(master) when distributor is "pyspark"; None for "local"."""
    if distributor != "pyspark":
        yield None
        return
    with spark_session(master) as spark:
        yield spark


_shipped: set[str] = set()  # applicationIds of the SparkContexts that have this project's code


def ship_code(spark) -> None:
    """Give the executors this project's modules, which Spark tasks of step 3 run: the project is no installed
    package, so they go as a zip on the workers' path (what spark-submit --py-files does), once per SparkContext."""
    context = spark.sparkContext
    if context.applicationId in _shipped:
        return
    package = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(tempfile.mkdtemp(prefix="prompt-search-code-"), "prompt_search.zip")
    with zipfile.ZipFile(path, "w") as archive:
        for module in sorted(glob.glob(os.path.join(package, "**", "*.py"), recursive=True)):
            archive.write(module, os.path.join("prompt_search", os.path.relpath(module, package)))
    context.addPyFile(path)
    _shipped.add(context.applicationId)

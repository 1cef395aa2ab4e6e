"""Issue 25: what the server's exact filter columns cost at 1M rows, against the float64 columns they replaced
(which rounded every seed above 2**53). One seed column (uint64, a tenth empty) and one height column (int32).

    .venv/bin/python benchmarks/bench_filters.py

Prints the load time and memory of the columns and the time to filter 4,096 candidates (MAX_CANDIDATES) by
seed <= 2**63 and height >= 700, the median and p99 over 200 calls of each way, in turns.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the repository root
from prompt_search.search.filters import FilterColumn  # noqa: E402

ROWS, CANDIDATES, CALLS = 1_000_000, 4096, 200


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    rng = np.random.default_rng(0)
    seeds = pa.chunked_array([pa.array(rng.integers(0, 2**64 - 1, ROWS, dtype=np.uint64, endpoint=True),
                                       mask=rng.random(ROWS) < 0.1)])
    heights = pa.chunked_array([pa.array(rng.integers(256, 1024, ROWS).astype(np.int32))])
    start = time.perf_counter()
    exact = [FilterColumn.of(seeds), FilterColumn.of(heights)]
    load = time.perf_counter() - start
    rounded = [column.cast(pa.float64(), safe=False).to_numpy() for column in (seeds, heights)]
    positions = rng.integers(0, ROWS, CANDIDATES)

    def filter_exact() -> np.ndarray:
        return exact[0].within(positions, None, 2**63) & exact[1].within(positions, 700, None)

    def filter_rounded() -> np.ndarray:
        return (rounded[0][positions] <= 2**63) & (rounded[1][positions] >= 700)

    times: dict[str, list[float]] = {"exact (FilterColumn)": [], "float64 (before)": []}
    for _ in range(CALLS):
        for name, run in zip(times, (filter_exact, filter_rounded), strict=True):
            begin = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - begin)
    for name, taken in times.items():
        print(f"{name}: median {np.median(taken) * 1e6:.0f} us, p99 {np.percentile(taken, 99) * 1e6:.0f} us "
              f"for {CANDIDATES} candidates (load average {os.getloadavg()[0]:.1f})")
    memory = sum(c.values.nbytes + (0 if c.present is None else c.present.nbytes) for c in exact)
    print(f"columns loaded in {load * 1e3:.0f} ms: {memory / 2**20:.1f} MiB "
          f"(float64 before: {sum(r.nbytes for r in rounded) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()

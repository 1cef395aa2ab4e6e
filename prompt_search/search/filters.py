"""The item table's columns a search filters on (width, height, steps, cfg scale, seed, date), loaded once per index
set, and a row's value tested against a request's range, exactly whatever the column's type."""

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# A filter's name -> the item table's column. Loaded whole at start (at most 9 bytes a row each: 54 MB at 1M rows) so
# that a request filters its candidates by position, never scanning the table.
FILTER_COLUMNS = {"width": "width", "height": "height", "steps": "num_steps", "cfg_scale": "cfg_scale",
                  "seed": "seed", "date": "timestamp", "adherence": "adherence", "aesthetic": "aesthetic",
                  "prompt_group": "prompt_group"}
SORT_KEYS = ("adherence", "aesthetic", "date")  # besides relevance: filter columns a search may sort its results by
Bound = int | float | None  # a filter's low or high end, None: open


@dataclass
class FilterColumn:
    """An item table column to filter on. Integers keep their own type and are compared exactly: as float64, every
    seed above 2**53 (ComfyUI's and Fooocus's reach 2**64 - 1) would equal its neighbours."""
    values: np.ndarray  # nulls hold 0
    present: np.ndarray | None  # which rows have a value; None when all do

    @classmethod
    def of(cls, column: pa.ChunkedArray) -> "FilterColumn":
        if pa.types.is_timestamp(column.type):
            column = pc.cast(column, pa.timestamp("s", tz=column.type.tz)).cast(pa.int64())
        elif pa.types.is_floating(column.type):
            column = column.cast(pa.float64())  # compared with the request's float64 bounds as they were given
        present = column.is_valid().to_numpy(zero_copy_only=False) if column.null_count else None
        return cls(pc.fill_null(column, 0).to_numpy(), present)

    def sort_values(self, positions: np.ndarray) -> np.ndarray:
        """The rows' values as float64 for ordering, NaN where a row has none."""
        values = self.values[positions].astype(np.float64)
        if self.present is not None:
            values[~self.present[positions]] = np.nan
        return values

    def groups(self, positions: np.ndarray) -> np.ndarray:
        """The rows' values as group keys: rows without one each a group of their own (a key no value has)."""
        keys = self.values[positions].astype(object)
        if self.present is not None:
            missing = ~self.present[positions]
            # text, which never equals a number; a 1-D array of them (numpy would read a list of tuples as 2-D)
            keys[missing] = np.array([f"row {at}" for at in positions[missing]], dtype=object)
        return keys

    def within(self, positions: np.ndarray, low: Bound, high: Bound) -> np.ndarray:
        """Which rows at positions have a value from low to high, both included (a row without one never does)."""
        values = self.values[positions]
        mask = np.ones(len(values), bool) if self.present is None else self.present[positions]
        if values.dtype.kind == "f":
            bounds = (_float(low), _float(high))
        elif (bounds := _integer_interval(low, high, np.iinfo(values.dtype))) is None:
            return np.zeros(len(values), bool)
        if bounds[0] is not None:
            mask &= values >= values.dtype.type(bounds[0])
        if bounds[1] is not None:
            mask &= values <= values.dtype.type(bounds[1])
        return mask


def _integer_interval(low: Bound, high: Bound, limits: np.iinfo) -> tuple[int, int] | None:
    """[low, high] as the integers of the column's type it holds (first, last); None when it holds none (or a bound
    is NaN). Python compares ints and floats exactly, so a bound is never rounded on the way."""
    first = limits.min if low is None else low
    last = limits.max if high is None else high
    if not (first <= last and first <= limits.max and last >= limits.min):
        return None
    return math.ceil(max(first, limits.min)), math.floor(min(last, limits.max))


def _float(bound: Bound) -> float | None:
    """bound for a float column: an integer too large for a float is beyond every value."""
    if bound is None:
        return None
    try:
        return float(bound)
    except OverflowError:
        return math.inf if bound > 0 else -math.inf

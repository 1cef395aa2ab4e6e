"""An item table's rows found by id: its ids sorted once, at start, then each id found by binary search, O(log n).

clip-retrieval's /metadata names results by id, and a prompt's picture is the images index's row of the same id.
"""

import bisect
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prompt_search.items import ItemTable

DIGEST = re.compile(r"[0-9a-f]{16}")  # step 1's ids, stored as unsigned 64-bit integers (items.py)


class IdPositions:
    """The positions of ids in one item table. Made at start, off the request path: one read of the id column and a
    sort (24 bytes a row for step 1's ids, 8 MB a million)."""

    def __init__(self, items: ItemTable):
        column = items.reader.read_all().column("id").combine_chunks()
        self.order = pc.sort_indices(column).to_numpy()
        ordered = column.take(pa.array(self.order))
        self.digests: np.ndarray | None = ordered.to_numpy() if pa.types.is_uint64(column.type) else None
        self.strings = ordered

    def position(self, item_id: str) -> int | None:
        """The row of item_id, or None when the table has no such id."""
        if self.digests is not None:
            if not DIGEST.fullmatch(item_id):
                return None
            key = np.uint64(int(item_id, 16))
            at = int(np.searchsorted(self.digests, key))
            found = at < len(self.digests) and self.digests[at] == key
        else:
            at = bisect.bisect_left(self.strings, item_id, key=lambda scalar: scalar.as_py())
            found = at < len(self.strings) and self.strings[at].as_py() == item_id
        return int(self.order[at]) if found else None

"""The item table: rows by position across record batches, whatever chunks the ids came in."""

import pyarrow as pa
import pyarrow.parquet as pq

from prompt_search import items as items_module
from prompt_search.items import ItemTable, write_items


def test_rows_by_position_across_batches_and_joined_metadata(tmp_path, monkeypatch):
    monkeypatch.setattr(items_module, "BATCH_ROWS", 1000)
    ids = pa.chunked_array([pa.array([f"id-{c}-{r}" for r in range(128)]) for c in range(20)])  # as step 3's batches
    pq.write_table(pa.table({"id": [f"id-{c}-0" for c in range(20)][::-1], "prompt": [f"p{c}" for c in range(20)]}),
                   tmp_path / "metadata.parquet")
    write_items(str(tmp_path / "items.arrow"), ids, [str(tmp_path / "metadata.parquet")], str(tmp_path))
    table = ItemTable(str(tmp_path / "items.arrow"))
    assert len(table) == 2560 and table.reader.num_record_batches == 3
    rows = table.rows([0, 999, 1000, 1001, 2559, 128 * 19])
    assert [row["id"] for row in rows] == ["id-0-0", "id-7-103", "id-7-104", "id-7-105", "id-19-127", "id-19-0"]
    assert rows[0]["prompt"] == "p19" and rows[5]["prompt"] == "p0" and rows[1]["prompt"] is None
    assert table.column("id").to_pylist() == ids.to_pylist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.arrow", "metadata.parquet"]  # scratch copies gone

"""The item table: rows by position across record batches, whatever chunks the ids came in."""

import pyarrow as pa
import pyarrow.parquet as pq

from prompt_search import items as items_module
from prompt_search.items import ItemTable, write_items
from prompt_search.sources.urls import url_id


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


def test_step_1_ids_are_stored_as_their_64_bit_digests_and_read_back_as_hex(tmp_path):
    ids = [url_id(f"https://example.com/{i}.png") for i in range(300)]
    pq.write_table(pa.table({"id": ids[::-1], "prompt": [f"p{i}" for i in range(300)][::-1]}), tmp_path / "m.parquet")
    write_items(str(tmp_path / "items.arrow"), pa.chunked_array([pa.array(ids[:100]), pa.array(ids[100:])]),
                [str(tmp_path / "m.parquet")], str(tmp_path))
    table = ItemTable(str(tmp_path / "items.arrow"))
    assert table.reader.schema.field("id").type == pa.uint64()
    assert table.reader.read_all().column("id")[7].as_py() == int(ids[7], 16)
    assert [row["id"] for row in table.rows([0, 299, 7])] == [ids[0], ids[299], ids[7]]
    assert table.rows([7])[0]["prompt"] == "p7"
    assert table.column("id").to_pylist() == ids


def test_ids_other_than_digests_stay_strings(tmp_path):
    for ids in (["0123456789abcdef", "sub/a.png"], ["0123456789ABCDEF"], ["0123456789abcdeg"], ["0123456789abcde"]):
        write_items(str(tmp_path / "items.arrow"), pa.chunked_array([pa.array(ids)]), [], str(tmp_path))
        table = ItemTable(str(tmp_path / "items.arrow"))
        assert table.reader.schema.field("id").type == pa.string()
        assert [row["id"] for row in table.rows(list(range(len(ids))))] == ids
        assert list(table.ids()) == ids and table.ids()[-1] == ids[-1]  # a Sequence: iterated to its end, from it

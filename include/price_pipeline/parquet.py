"""Each pair's monthly Parquet copy of its canonical CSVs, for Athena and the page's long ranges: rows typed
from the CSVs, written deterministically (the same rows give the same bytes) and only when they changed.
The bulk DAG writes it (``history``), the migration merges into it, the page reads it (no Airflow here).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from include.price_pipeline import layout, store

#: What S3 is told a Parquet object is.
MEDIA_TYPE = "application/vnd.apache.parquet"
FLOAT_COLUMNS = ("open", "high", "low", "close", "volume", "quote_volume", "weighted_average")
STRING_COLUMNS = ("pair", "source_key", "source_format")


def canonical_rows(body: bytes) -> list[dict]:
    """The rows of a canonical CSV object, typed for Parquet (numbers float or None, timestamp aware)."""
    rows = []
    for raw in csv.DictReader(io.StringIO(body.decode("utf-8"))):
        row = {"timestamp": datetime.fromisoformat(raw["timestamp"].replace("Z", "+00:00"))}
        row.update({column: float(raw[column]) if raw[column] != "" else None for column in FLOAT_COLUMNS})
        row.update({column: raw[column] for column in STRING_COLUMNS})
        rows.append(row)
    return rows


def read_rows(body: bytes | None, columns: list[str] | None = None) -> list[dict]:
    """The rows of a Parquet object (``columns``, default all) as dicts, timestamps as UTC datetimes; none
    without a body."""
    by_column = read_columns(body, columns)
    return [dict(zip(by_column, row, strict=True)) for row in zip(*by_column.values(), strict=True)]


def read_columns(body: bytes | None, columns: list[str] | None = None) -> dict[str, list]:
    """The columns of a Parquet object (``columns``, default all) as lists, timestamps as UTC datetimes;
    empty lists without a body."""
    import pyarrow.parquet as pq

    if not body:
        return {name: [] for name in columns or layout.CANONICAL_COLUMNS}
    table = pq.read_table(io.BytesIO(body), columns=columns)
    return {name: _values(table.column(name)) for name in table.column_names}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _values(column) -> list:
    """A column's values; a timestamp column's from its microseconds (Arrow's own conversion of a zoned
    timestamp is 8 times slower: a year of one pair's prices, 105,120 rows, took 0.5 s)."""
    import pyarrow as pa

    if not pa.types.is_timestamp(column.type):
        return column.to_pylist()
    micros = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()
    return [None if value is None else _EPOCH + timedelta(microseconds=value) for value in micros]


def parquet_schema():
    """layout.CANONICAL_COLUMNS as Arrow types: timestamp in UTC (microseconds), numbers float64."""
    import pyarrow as pa

    types = {"timestamp": pa.timestamp("us", tz="UTC"), **dict.fromkeys(FLOAT_COLUMNS, pa.float64())}
    return pa.schema([pa.field(column, types.get(column, pa.string())) for column in layout.CANONICAL_COLUMNS])


def parquet_bytes(rows: Iterable[dict]) -> bytes:
    """One Parquet file of canonical rows, ordered by (timestamp, source_key).

    The same rows give the same bytes, in any order: every writer option that could vary is pinned,
    and nothing time- or host-dependent is written (``created_by`` names the pyarrow version only).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    ordered = sorted(rows, key=lambda row: (row["timestamp"], row["source_key"]))
    schema = parquet_schema()
    table = pa.Table.from_pydict({name: [row[name] for row in ordered] for name in schema.names}, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        version="2.6",
        data_page_version="1.0",
        compression="zstd",
        compression_level=3,
        use_dictionary=list(STRING_COLUMNS),
        write_statistics=True,
        row_group_size=1_048_576,
        store_schema=True,
        write_page_index=False,
        write_page_checksum=False,
    )
    return sink.getvalue().to_pybytes()


def write_parquet(s3, bucket: str, prefix: str, bodies: dict[str, bytes], month_keys: list[str], rule_set) -> list:
    """Rewrite each pair's Parquet object of each month from all its canonical CSVs; skip identical bytes.
    A month with a canonical CSV has a Parquet object for every configured pair, even without its row."""
    by_pair: dict[str, dict[tuple[int, int], list[dict]]] = {pair: {} for pair in rule_set.pairs}
    for key in month_keys:
        slot = layout.slot_of_key(key)
        for months in by_pair.values():
            months.setdefault((slot.year, slot.month), [])
        for row in canonical_rows(bodies.get(key, b"")):
            if row["pair"] in by_pair:
                by_pair[row["pair"]][(slot.year, slot.month)].append(row)
    return [item for pair, months in by_pair.items() for item in write_months(s3, bucket, prefix, months, pair)]


def write_months(s3, bucket: str, prefix: str, by_month: dict[tuple[int, int], list[dict]], pair: str) -> list:
    """Write each month's Parquet object of ``pair``'s rows unless identical bytes are there."""
    stored = store.list_with_etags(s3, bucket, [layout.parquet_key(y, m, pair, prefix) for y, m in by_month])
    out = []
    for (year, month), rows in sorted(by_month.items()):
        key, body = layout.parquet_key(year, month, pair, prefix), parquet_bytes(rows)
        changed = stored.get(key) != store.md5(body)
        if changed:
            store.write_bytes(s3, bucket, key, body, MEDIA_TYPE)
        out.append({"key": key, "rows": len(rows), "bytes": len(body), "written": changed})
    return out

"""Test records in the Poloniex chart shape (shared by the test layers)."""

from __future__ import annotations

from datetime import UTC, datetime


def candle(slot: datetime, weighted_average: float, volume: float = 10.0) -> dict:
    """A consistent Poloniex-style record for ``slot`` around ``weighted_average``."""
    return {
        "date": int(slot.timestamp()),
        "high": round(weighted_average * 1.002, 8),
        "low": round(weighted_average * 0.998, 8),
        "open": weighted_average,
        "close": weighted_average,
        "volume": round(volume * weighted_average, 8),
        "quoteVolume": volume,
        "weightedAverage": weighted_average,
    }


def seed_normalized(s3, bucket: str, record: dict, pair: str = "ETH/USDT") -> str:
    """Write ``record`` as ``pair``'s row of its window's canonical CSV, as the Glue job would (its own
    functions), beside the rows of other pairs there."""
    slot = datetime.fromtimestamp(record["date"], tz=UTC)
    return _seed_rows(s3, bucket, slot, {pair: record})


def seed_pairs(s3, bucket: str, slot: datetime, prices: dict[str, float]) -> str:
    """Write pairs' rows of the canonical CSV of ``slot`` (``{pair: weighted average}``, a row each) as the
    Glue job would (its own functions), beside the rows of other pairs there."""
    return _seed_rows(s3, bucket, slot, {pair: candle(slot, price) for pair, price in prices.items()})


def _seed_rows(s3, bucket: str, slot: datetime, records: dict[str, dict]) -> str:
    import csv
    import io
    import json

    from botocore.exceptions import ClientError

    from include.glue.price_glue import validation
    from include.price_pipeline import layout

    aliases = json.loads(layout.FIELD_ALIASES_PATH.read_text())
    key = layout.analysis_key(slot)
    try:
        there = list(csv.DictReader(io.StringIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode())))
    except ClientError as error:
        if error.response["Error"]["Code"] != "NoSuchKey":
            raise
        there = []
    rows = {row["pair"]: row for row in there}
    for pair, record in records.items():
        source = layout.ingestion_key(slot, ".json", pair=pair)
        rows[pair] = validation.normalize(record, aliases, pair, source, "json")
    s3.put_object(Bucket=bucket, Key=key, Body=validation.to_csv(*(rows[pair] for pair in sorted(rows))))
    return key


def glue_args(bucket: str, start: datetime, end: datetime | None = None):
    """The Glue job's parsed arguments for the windows ``[start, end)`` (one window without ``end``) with
    the repository's prefixes and field aliases, as the DAGs pass them."""

    from include.glue.price_glue import job
    from include.price_pipeline import layout

    window = [f"--window_start={layout.iso(start)}"] + ([f"--window_end={layout.iso(end)}"] if end else [])
    return job.parse_args(
        [
            f"--bucket={bucket}",
            f"--ingestion_prefix={layout.INGESTION_PREFIX}",
            f"--analysis_prefix={layout.ANALYSIS_PREFIX}",
            f"--quarantine_prefix={layout.QUARANTINE_PREFIX}",
            *window,
            f"--field_aliases={layout.FIELD_ALIASES_PATH.read_text()}",
        ]
    )

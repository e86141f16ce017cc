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
    """Write ``record`` straight to the analysis prefix as the Glue job would (its own functions)."""
    import json

    from include.glue.price_glue import validation
    from include.price_pipeline import layout

    aliases = json.loads(layout.FIELD_ALIASES_PATH.read_text())
    slot = datetime.fromtimestamp(record["date"], tz=UTC)
    source = layout.ingestion_key(slot, ".json")
    row = validation.normalize(record, aliases, pair, source, "json")
    key = layout.analysis_key(slot)
    s3.put_object(Bucket=bucket, Key=key, Body=validation.to_csv(row))
    return key


def seed_pairs(s3, bucket: str, slot: datetime, prices: dict[str, float]) -> str:
    """Write the other pairs' canonical CSV of ``slot`` (``{pair: weighted average}``, a row each) as the
    Glue job would (its own functions)."""
    import json

    from include.glue.price_glue import validation
    from include.price_pipeline import layout

    aliases = json.loads(layout.FIELD_ALIASES_PATH.read_text())
    rows = [
        validation.normalize(candle(slot, price), aliases, pair, layout.ingestion_key(slot, ".json", pair=pair), "json")
        for pair, price in sorted(prices.items())
    ]
    key = layout.pairs_analysis_key(slot)
    s3.put_object(Bucket=bucket, Key=key, Body=validation.to_csv(*rows))
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

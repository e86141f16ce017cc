"""Normalization throughput of the Glue job script, in process: decode, detect the format, parse and
normalize records in the producer formats the local feed rotates through (JSON, CSV, XML, key=value)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from include.glue.price_glue import formats, validation
from include.price_pipeline import layout
from local.feed import FORMATS, render, synthetic_record


def mixed_objects(count: int, first: datetime = datetime(2025, 1, 1, tzinfo=UTC)) -> list[tuple[str, bytes]]:
    """``count`` (key, raw bytes) pairs: synthetic records of consecutive slots, formats in rotation."""
    out = []
    for index in range(count):
        slot = first + layout.SLOT * index
        fmt = FORMATS[index % len(FORMATS)]
        out.append((layout.ingestion_key(slot, f".{fmt}", pair="ETH/USDT"), render(synthetic_record(slot), fmt)))
    return out


def _normalize_all(objects: list[tuple[str, bytes]], aliases: dict) -> int:
    rows = 0
    for key, data in objects:
        fmt, raws = formats.parse_object(formats.decode_text(data), aliases)
        for raw in raws:
            validation.normalize(raw, aliases, "ETH/USDT", key, fmt)
            rows += 1
    return rows


def _best(objects: list[tuple[str, bytes]], aliases: dict, repeats: int) -> tuple[int, float]:
    best, rows = float("inf"), 0
    for _ in range(repeats):
        started = time.perf_counter()
        rows = _normalize_all(objects, aliases)
        best = min(best, time.perf_counter() - started)
    return rows, best


def parse_and_normalize(objects: list[tuple[str, bytes]], repeats: int = 3) -> dict:
    """Best of ``repeats`` timings of decode_text + parse_object + normalize, overall and per format."""
    aliases = json.loads(layout.FIELD_ALIASES_PATH.read_text())
    rows, seconds = _best(objects, aliases, repeats)
    by_format = {}
    for fmt in FORMATS:
        count, spent = _best([item for item in objects if item[0].endswith(f".{fmt}")], aliases, repeats)
        by_format[fmt] = round(count / spent)
    return {"records": rows, "seconds": seconds, "records_per_second": rows / seconds, "by_format": by_format}

"""``make migrate-storage``: the default pair's canonical CSVs (``layout.legacy_analysis_key``) and Parquet
months (``layout.legacy_parquet_key``) of before one storage shape moved into every pair's shape, once, with
conditional writes (README "Upgrading to one storage shape for every pair"). An old object is deleted only
once what it holds is in the new place, and only if unchanged since read. A second run finds nothing to move.
"""

from __future__ import annotations

import io
import logging
import sys
from collections import Counter

from include.glue.price_glue.validation import to_csv
from include.price_pipeline import layout, parquet, settings, store
from include.price_pipeline.analysis import parse_canonical_csv

log = logging.getLogger(__name__)


def _csv_rows(body: bytes | None) -> list[dict]:
    import csv

    return list(csv.DictReader(io.StringIO(body.decode("utf-8")))) if body else []


def _move(s3, bucket: str, old: str, new: str, merge, content_type: str, counts: Counter, kind: str) -> None:
    """Write ``merge(old bytes, new bytes or None)`` over the version of ``new`` read (None: nothing to write,
    the bytes of ``new`` when they already hold the old content); delete ``old`` once its content is there and
    only if unchanged since read."""
    stored = store.read_with_etag(s3, bucket, old)
    if stored is None:  # moved meanwhile by another run
        return
    body, wrote = store.update(s3, bucket, new, lambda body: merge(stored[0], body), content_type)
    if not wrote and merge(stored[0], body) is None:
        counts[f"{kind}_differs"] += 1
        log.warning("%s holds another row of the default pair: %s left for you to compare", new, old)
    elif (store.read_with_etag(s3, bucket, old) or (None, None))[1] != stored[1]:
        counts[f"{kind}_changed"] += 1
        log.warning("%s changed while it was moved: not deleted; run the migration again", old)
    else:
        s3.delete_object(Bucket=bucket, Key=old)
        counts[f"{kind}_{'moved' if wrote else 'already_there'}"] += 1
        log.info("%s -> %s", old, new)


def _merge_csv(pair: str):
    """The old CSV's one row, as ``pair``'s, among the window's rows (by pair, as the job writes them); the new
    bytes when they hold that row already, None when they hold another row of the pair."""

    def merge(old: bytes, new: bytes | None) -> bytes | None:
        parse_canonical_csv(old)  # ValueError: not canonical, left as it is
        row, rows = {**_csv_rows(old)[0], "pair": pair}, _csv_rows(new)
        if any(r["pair"] == pair for r in rows):
            return new if to_csv(row) in {to_csv(r) for r in rows if r["pair"] == pair} else None
        return to_csv(*sorted([*rows, row], key=lambda r: r["pair"]))

    return merge


def _merge_parquet(old: bytes, new: bytes | None) -> bytes:
    """The old month's rows and the new month's (a timestamp in both: the new one's)."""
    rows = {row["timestamp"]: row for row in parquet.read_rows(old) + parquet.read_rows(new)}
    return parquet.parquet_bytes(rows.values())


def migrate(s3, config: settings.Config, pair: str, parquet_prefix: str = layout.PARQUET_PREFIX) -> Counter:
    """Move every old canonical CSV and Parquet month, the default pair's (``pair``); return the counts."""
    counts: Counter = Counter()
    csv_merge = _merge_csv(pair)
    for key in store.list_keys(s3, config.bucket, config.analysis_prefix):
        slot = store.slot_of(key)
        if slot and key == layout.legacy_analysis_key(slot, config.analysis_prefix):
            new = layout.analysis_key(slot, config.analysis_prefix)
            try:
                _move(s3, config.bucket, key, new, csv_merge, "text/csv", counts, "csv")
            except ValueError as error:
                counts["csv_not_canonical"] += 1
                log.warning("%s is not canonical (%s): left as it is", key, error)
    for key in store.list_keys(s3, config.bucket, parquet_prefix):
        parts = key[len(parquet_prefix) :].split("/")
        if len(parts) == 3 and parts[0][:5] == "year=" and parts[1][:6] == "month=":
            year, month = int(parts[0][5:]), int(parts[1][6:])
            if key == layout.legacy_parquet_key(year, month, parquet_prefix):
                new = layout.parquet_key(year, month, pair, parquet_prefix)
                _move(s3, config.bucket, key, new, _merge_parquet, parquet.MEDIA_TYPE, counts, "parquet")
    return counts


if __name__ == "__main__":
    import boto3

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = settings.load()
    counts = migrate(boto3.client("s3"), config, settings.load_rules(config).default_pair)
    print(f"s3://{config.bucket}: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing to move"))
    sys.exit(1 if any(k.endswith("_changed") for k in counts) else 0)

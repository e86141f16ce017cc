"""S3 reads and writes of the pipeline's objects, given a boto3 S3 client (no Airflow here): tasks pass
``S3Hook(aws_conn_id).get_conn()``, tests a client on the local stand-in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from botocore.exceptions import ClientError

from include.price_pipeline import layout
from include.price_pipeline.analysis import Price, parse_canonical_rows

#: Media type of a window's ledger object (JSON lines, an entry per pair).
NDJSON = "application/x-ndjson"
#: Upper bound of concurrent S3 requests (also capped by the client's connection pool, 10 by default).
MAX_WORKERS = 16
#: How often :func:`update` reads an object again after losing a conditional write to another writer.
WRITE_ATTEMPTS = 20
#: S3 answers a failed If-Match / If-None-Match with one of these (412, or 409 for a concurrent write).
CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class ConditionFailed(Exception):
    """A conditional write lost: the object was created or changed by someone else since it was read."""


def _is_missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


def read_bytes(s3, bucket: str, key: str) -> bytes | None:
    """The object's bytes, or None if it does not exist."""
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if _is_missing(error):
            return None
        raise


def write_bytes(s3, bucket: str, key: str, body: bytes, content_type: str) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)


def read_with_etag(s3, bucket: str, key: str) -> tuple[bytes, str] | None:
    """(bytes, ETag without quotes) of the object, or None if it does not exist."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if _is_missing(error):
            return None
        raise
    return response["Body"].read(), response["ETag"].strip('"')


def md5(body: bytes) -> str:
    """The ETag S3 gives ``body`` written in one part without SSE-KMS."""
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


def condition_failed(error: ClientError) -> bool:
    response = error.response
    return (
        response.get("Error", {}).get("Code") in CONDITION_FAILED
        or str(response.get("ResponseMetadata", {}).get("HTTPStatusCode")) in CONDITION_FAILED
    )


def write_if(s3, bucket: str, key: str, body: bytes, content_type: str, etag: str | None) -> str:
    """Write only over the version read: ``etag`` None creates (If-None-Match: *), else replaces the
    object whose ETag is ``etag`` (If-Match). Returns the new ETag; raises ConditionFailed when the
    object was created or changed meanwhile (S3 and the stand-in enforce both conditions)."""
    condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
    try:
        response = s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, **condition)
    except ClientError as error:
        if condition_failed(error):
            raise ConditionFailed(key) from error
        raise
    return str(response.get("ETag", "")).strip('"')


def update(s3, bucket: str, key: str, change: Callable[[bytes | None], bytes | None], content_type: str,
           read_first: bool = True) -> tuple[bytes | None, bool]:  # fmt: skip
    """The one retry loop of conditional writes: ``change(stored bytes or None) -> bytes to store`` (None or
    the stored bytes: nothing to write) over exactly the version read, read and asked again up to
    WRITE_ATTEMPTS times when another writer came in between. Returns (the bytes the key holds, whether this
    call wrote them). Without ``read_first`` the first try creates the object unread (If-None-Match)."""
    body, etag, read = None, None, False
    if read_first:
        body, etag = read_with_etag(s3, bucket, key) or (None, None)
        read = True
    for _ in range(WRITE_ATTEMPTS):
        new = change(body)
        if read and (new is None or new == body):
            return body, False
        if new is not None:
            try:
                write_if(s3, bucket, key, new, content_type, etag)
                return new, True
            except ConditionFailed:
                pass
        body, etag = read_with_etag(s3, bucket, key) or (None, None)
        read = True
    raise RuntimeError(f"{key} kept changing while being written ({WRITE_ATTEMPTS} attempts): not written")


def list_keys(s3, bucket: str, prefix: str, start_after: str = "") -> list[str]:
    """Every key under ``prefix`` (after ``start_after``), in key order."""
    keys = []
    paginator = s3.get_paginator("list_objects_v2")
    extra = {"StartAfter": start_after} if start_after else {}
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, **extra):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def records_present(s3, bucket: str, prefix: str, slots: list[datetime], default_pair: str = "") -> set:
    """``{(slot, pair)}`` of the windows ``slots`` (in order) that have a raw record, any producer's: the one
    lister of raw records (one listing for one window, else one per day partition, in parallel).
    ``default_pair``: the pair the legacy alias is read as."""
    if len(slots) == 1:
        prefixes = [layout.ingestion_window_prefix(slots[0], prefix)]
    else:
        prefixes = [prefix + day for day in layout.day_partitions(slots[0], slots[-1])] if slots else []
    keys = [key for listed in in_parallel(s3, lambda p: list_keys(s3, bucket, p), prefixes) for key in listed]
    return layout.records_listed(keys, slots, prefix, default_pair)


def list_with_etags(s3, bucket: str, prefixes: list[str]) -> dict[str, str]:
    """``{key: ETag without quotes}`` of every object under each of ``prefixes`` (listed in parallel)."""

    def listing(prefix: str) -> dict[str, str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return {item["Key"]: item["ETag"].strip('"') for page in pages for item in page.get("Contents", [])}

    return {key: etag for found in in_parallel(s3, listing, prefixes) for key, etag in found.items()}


def csv_keys(s3, bucket: str, prefix: str, first: datetime, last: datetime) -> set[str]:
    """Every window's canonical CSV key (``layout.analysis_key``) with a slot in ``[first, last]``: one
    listing per day partition."""
    first_key, last_key = layout.analysis_key(first, prefix), layout.analysis_key(last, prefix)
    keys = set()
    for day in layout.day_partitions(first, last):
        day_prefix = f"{prefix}{day}"
        after = "" if first_key < day_prefix else _just_before(first_key)
        keys.update(k for k in list_keys(s3, bucket, day_prefix, after) if first_key <= k <= last_key)
    return {key for key in keys if canonical_slot(key, prefix)}


def slot_of(key: str) -> datetime | None:
    """The slot a key names (``layout.slot_of_key``), None for a key with no stamp (no object of ours)."""
    try:
        return layout.slot_of_key(key)
    except ValueError:
        return None


def canonical_slot(key: str, prefix: str) -> datetime | None:
    """The slot of a canonical CSV key (``<slot>/pairs.csv``), None for any other key."""
    at = slot_of(key)
    return at if at and key == layout.analysis_key(at, prefix) else None


def _just_before(key: str) -> str:
    """A StartAfter value that still includes ``key`` itself."""
    return key[:-1] + chr(ord(key[-1]) - 1)


def csv_prices(body: bytes) -> dict[str, Price]:
    """``{pair: Price}`` of a window's canonical CSV, a row per pair. ValueError when it is not canonical."""
    return {price.pair: price for price in parse_canonical_rows(body)}


def load_rule_prices(s3, bucket: str, prefix: str, rule_set, pairs: list[str], slot: datetime,
                     listed: set[str], unreadable: dict[str, str] | None = None) -> dict[str, list[Price]]:  # fmt: skip
    """``{pair: [Price, ...]}`` of the canonical CSVs ``listed`` that the pairs' decisions at ``slot`` read
    (``rules.slots_read``), one GET per CSV for every pair, in rounds until nothing new is asked for. A CSV that
    is not canonical holds no record: ``{key: why}`` in ``unreadable`` (without it: ValueError)."""
    from include.price_pipeline import rules

    slots = sorted({layout.slot_of_key(key) for key in listed})
    keys = {pair: {at: layout.analysis_key(at, prefix) for at in slots} for pair in pairs}
    read: dict[str, dict[str, Price]] = {}
    while True:
        wanted = set()
        for pair, of in keys.items():
            candidates = [at for at, key in of.items() if key not in read or pair in read[key]]
            known = [read[key][pair] for key in of.values() if pair in read.get(key, {})]
            wanted |= {of[at] for at in rules.slots_read(rule_set.pairs[pair], candidates, slot, known)} - read.keys()
        if not wanted:
            break
        ordered = sorted(wanted)
        for key, body in zip(ordered, read_many(s3, bucket, ordered), strict=True):
            try:
                read[key] = {} if body is None else csv_prices(body)  # None: deleted
            except ValueError as error:
                if unreadable is None:
                    raise
                read[key], unreadable[key] = {}, str(error)
    return {pair: [read[key][pair] for key in of.values() if pair in read.get(key, {})] for pair, of in keys.items()}


def in_parallel(s3, call, items: list) -> list:
    """``[call(item) for item in items]``, the calls made in parallel: the one way the pipeline, the bulk
    DAG and the page make many S3 requests at once (at most MAX_WORKERS, or the client's pool)."""
    pooled = getattr(getattr(getattr(s3, "meta", None), "config", None), "max_pool_connections", MAX_WORKERS)
    workers = max(1, min(MAX_WORKERS, pooled or MAX_WORKERS, len(items)))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(call, items))


def read_many(s3, bucket: str, keys: list[str]) -> list[bytes | None]:
    """Each key's bytes (None where there is no object), in the order of ``keys``, read in parallel."""
    return in_parallel(s3, lambda key: read_bytes(s3, bucket, key), keys)


def quarantine_reason_keys(s3, bucket: str, prefix: str, start: datetime, end: datetime) -> list[str]:
    """The reason files the Glue job left for windows of ``[start, end)``, in key order (a reason file's key
    names its window, never its reason: that is inside): one listing of the window's folder for one window,
    else one per month, in parallel (quarantined objects are few: a month is one request, not 31)."""
    if end - start == layout.SLOT:
        prefixes = [layout.quarantine_window_prefix(start, prefix)]
    else:
        months = layout.months_between(start, end - layout.SLOT)
        prefixes = [f"{prefix}{layout.month_partition(year, month)}" for year, month in months]
    listed = [key for keys in in_parallel(s3, lambda p: list_keys(s3, bucket, p), prefixes) for key in keys]
    return sorted(k for k in listed if k.endswith(".reason.json") and (slot := slot_of(k)) and start <= slot < end)


def read_notes(s3, bucket: str, keys: list[str]) -> list[dict]:
    """The reason files ``keys`` read in parallel, each a JSON object with its ``key``; one gone meanwhile,
    or no JSON object, is left out."""
    notes = []
    for key, body in zip(keys, read_many(s3, bucket, keys), strict=True):
        try:
            note = json.loads(body) if body is not None else None
        except ValueError:
            continue
        if isinstance(note, dict):
            notes.append({**note, "key": key})
    return notes

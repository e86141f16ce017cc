"""S3 reads and writes of the pipeline's objects, given a boto3 S3 client (no Airflow here).

Tasks pass ``S3Hook(aws_conn_id).get_conn()``; tests pass a client on the local stand-in.
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

#: Media types of the ledger's objects: the default pair's entry is one JSON object, the other pairs'
#: object of a window holds JSON lines.
JSON, NDJSON = "application/json", "application/x-ndjson"
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


def read_json(s3, bucket: str, key: str) -> dict | None:
    """A JSON object, or None if it does not exist."""
    body = read_bytes(s3, bucket, key)
    return None if body is None else json.loads(body)


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
    """The one retry loop of the ledger's conditional writes: ``change(stored bytes, None when there is no
    object) -> bytes to store`` (None, or the stored bytes: nothing to write), written over exactly the
    version read (:func:`write_if`). When another writer came in between, the object is read again and
    ``change`` asked again, up to WRITE_ATTEMPTS times. Returns (the bytes the key holds, whether this call
    wrote them). Without ``read_first`` the first try creates the object unread (If-None-Match: a window's
    first analysis); a ``change`` that writes nothing then reads what is there."""
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


def analysis_keys_between(s3, bucket: str, prefix: str, first: datetime, last: datetime) -> list[str]:
    """The default pair's canonical CSV keys with slots in ``[first, last]``: one listing per day partition
    (other pairs' CSVs, in the window folders ``<slot>/<SLUG>.csv``, are not the default pair's)."""
    first_key, last_key = layout.analysis_key(first, prefix), layout.analysis_key(last, prefix)
    keys = []
    for day in layout.day_partitions(first, last):
        day_prefix = f"{prefix}{day}"
        after = "" if first_key < day_prefix else _just_before(first_key)
        keys.extend(
            k
            for k in list_keys(s3, bucket, day_prefix, after)
            if first_key <= k <= last_key and "/" not in k[len(day_prefix) :]
        )
    return keys


def _just_before(key: str) -> str:
    """A StartAfter value that still includes ``key`` itself."""
    return key[:-1] + chr(ord(key[-1]) - 1)


def prices_by_slot(bodies: dict[datetime, bytes], pair: str = "") -> dict[datetime, dict[str, Price]]:
    """``{slot: {pair: Price}}`` of canonical CSVs read: a window's pairs.csv holds a row per other pair;
    with ``pair``, each CSV is that pair's alone (the default pair's, whatever its rows name)."""
    return {slot: {pair or price.pair: price for price in parse_canonical_rows(body)} for slot, body in bodies.items()}


def load_rule_prices(s3, bucket: str, key_of, prefix: str, rule_set, pairs: list[str], slot: datetime,
                     files: list[datetime]) -> dict[str, list[Price]]:  # fmt: skip
    """``{pair: [Price, ...]}``: of the canonical CSVs ``key_of(slot, prefix)`` in the rules' look-back from
    ``slot`` (``files``: their slots), the ones the pairs' decisions read (``rules.slots_read`` for each
    pair, given what was read), one GET per slot for every pair, in rounds. A slot read without a pair's
    row is not that pair's reference, so the next candidate is read, until every decision has what it
    reads. ValueError when a CSV read is not canonical."""
    from include.price_pipeline import rules

    own = pairs[0] if key_of is layout.analysis_key else ""  # the default pair's CSVs are its alone
    read: dict[datetime, dict[str, Price]] = {}
    while True:
        wanted = set()
        for pair in pairs:
            candidates = [at for at in files if at not in read or pair in read[at]]
            known = [read[at][pair] for at in read if pair in read[at]]
            wanted |= rules.slots_read(rule_set.pairs[pair], candidates, slot, known) - read.keys()
        if not wanted:
            break
        slots = sorted(wanted)
        bodies = read_many(s3, bucket, [key_of(at, prefix) for at in slots])
        read.update(prices_by_slot({at: body or b"" for at, body in zip(slots, bodies, strict=True)}, own))
    return {pair: [read[at][pair] for at in sorted(read) if pair in read[at]] for pair in pairs}


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


def quarantine_reasons(s3, bucket: str, prefix: str, slot: datetime) -> list[dict]:
    """Reason files the Glue job left for the window starting at ``slot``."""
    window_prefix = f"{prefix}{layout.partition(slot)}{layout.slot_stamp(slot)}/"
    keys = [k for k in list_keys(s3, bucket, window_prefix) if k.endswith(".reason.json")]
    return [read_json(s3, bucket, k) for k in keys]

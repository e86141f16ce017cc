"""The job's S3 requests: listing a range's raw objects and canonical CSVs, bounded reads, conditional writes
of the canonical CSV (on any botocore), a window's planned writes, and the client."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from include.glue.price_glue.formats import Rejected
from include.glue.price_glue.validation import to_csv
from include.price_pipeline.layout import (
    SLOT_SECONDS,
    day_partitions,
    ingestion_window_prefix,
    iso,
    partition,
    slots_between,
)

MAX_WORKERS = 16
#: A conditional write of a window's canonical CSV is read, merged and tried again this often.
CONDITIONAL_ATTEMPTS = 8
#: S3 answers a failed If-Match / If-None-Match with one of these (412, or 409 for a concurrent write).
CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")
#: Longer ranges are listed by day partition rather than by window prefix (see list_raw_objects).
LIST_BY_DAY_ABOVE_SLOTS = 12
#: ``write_pairs_csv``'s ``listed`` when no listing was made: the key is read before it is written.
UNLISTED = object()


def list_raw_objects(s3, args):
    """``[(key, size, slot, modified), ...]`` in key order: every raw object of the range with its listed size,
    LastModified (ISO 8601) and window. Up to LIST_BY_DAY_ABOVE_SLOTS windows, one LIST per window; longer,
    one per day partition, in parallel (~30 requests instead of 8,640 for a month)."""
    slots = slots_between(args.start, args.end)
    slot_of_prefix = {ingestion_window_prefix(slot, args.ingestion_prefix): slot for slot in slots}
    if len(slots) <= LIST_BY_DAY_ABOVE_SLOTS:
        listings = [_list_objects(s3, args.bucket, prefix) for prefix in slot_of_prefix]
    else:
        days = sorted({args.ingestion_prefix + partition(slot) for slot in slots})
        with ThreadPoolExecutor(min(MAX_WORKERS, len(days))) as pool:
            listings = list(pool.map(lambda day: _list_objects(s3, args.bucket, day), days))
    lengths = sorted({len(prefix) for prefix in slot_of_prefix})
    found = {}
    for listing in listings:
        for key, size, modified, _etag in listing:
            for length in lengths:
                slot = slot_of_prefix.get(key[:length])
                if slot is not None:
                    found[key] = (key, size, slot, modified)
                    break
    return [found[key] for key in sorted(found)]


def list_canonical_etags(s3, args):
    """``{key: ETag}`` of the canonical CSVs already in the range's day partitions, one LIST a day, for a range
    of more than LIST_BY_DAY_ABOVE_SLOTS windows (``write_pairs_csv``'s ``listed``); None for a shorter one,
    whose CSVs are each read before they are written."""
    if len(slots_between(args.start, args.end)) <= LIST_BY_DAY_ABOVE_SLOTS:
        return None
    last = args.end - timedelta(seconds=SLOT_SECONDS)
    return list_etags(s3, args.bucket, [args.analysis_prefix + day for day in day_partitions(args.start, last)])


def list_raw_keys(s3, args):
    """Every raw object key of the range, in key order."""
    return [listed[0] for listed in list_raw_objects(s3, args)]


def list_etags(s3, bucket, prefixes):
    """``{key: ETag without quotes}`` of every object under each of ``prefixes``, listed in parallel."""
    with ThreadPoolExecutor(max(1, min(MAX_WORKERS, len(prefixes)))) as pool:
        listings = list(pool.map(lambda prefix: _list_objects(s3, bucket, prefix), prefixes))
    return {key: etag for listing in listings for key, _size, _modified, etag in listing}


def _list_objects(s3, bucket, prefix):
    """``[(key, size, LastModified as ISO 8601 UTC, ETag without quotes), ...]`` of every object under ``prefix``."""
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            # S3's LastModified has one-second resolution (whatever a stand-in gives): compare seconds only
            modified = iso(item["LastModified"])
            out.append((item["Key"], item["Size"], modified, item["ETag"].strip('"')))
    return out


def read_bounded(s3, bucket, key, limit, size=None):
    """Read at most ``limit`` bytes; reject larger objects without reading them whole (``size``: the listed
    size; without it a HEAD request asks)."""
    if size is None:
        size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    if size > limit:
        raise Rejected("object is {} bytes, over the {}-byte cap".format(size, limit))
    body = s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-{}".format(limit))["Body"]
    data = body.read(limit + 1)
    if len(data) > limit:
        raise Rejected("object grew past the {}-byte cap while being read".format(limit))
    return data


def write_pairs_csv(s3, bucket, key, rows, listed=UNLISTED):
    """Write the window's canonical CSV with ``rows`` and every row it holds of a pair this run did not
    re-derive (a re-run loses no pair), conditional on the version read, merged again when another run wrote
    in between; unchanged bytes are not written again. Returns ``(key, body)`` as it stands.

    ``listed``: the key's ETag as a listing of this run gave it, None when the listing had no such key. A
    key listed as absent is created unread (If-None-Match), one listed with the MD5 of ``rows`` alone is
    left as it is; any other is read first (an ETag that is no MD5, with SSE-KMS, only costs that read)."""
    fresh = {row["pair"] for row in rows}
    alone = to_csv(*sorted(rows, key=lambda row: row["pair"]))
    if listed is not UNLISTED and listed == _md5(alone):
        return key, alone
    current, etag = (None, None) if listed is None else _read_with_etag(s3, bucket, key)
    for _attempt in range(CONDITIONAL_ATTEMPTS):
        kept = list(csv.DictReader(io.StringIO(current.decode("utf-8")))) if current else []
        merged = sorted([row for row in kept if row["pair"] not in fresh] + rows, key=lambda row: row["pair"])
        body = to_csv(*merged)
        if body == current:
            return key, body
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            conditional_put(s3, condition, Bucket=bucket, Key=key, Body=body, ContentType="text/csv")
            return key, body
        except Exception as error:  # noqa: BLE001 - botocore's ClientError, told apart by its code
            if error_code(error) not in CONDITION_FAILED:
                raise
        current, etag = _read_with_etag(s3, bucket, key)
    raise RuntimeError("{} changed under {} conditional writes in a row".format(key, CONDITIONAL_ATTEMPTS))


def _md5(body):
    """The ETag S3 gives ``body`` written in one part without SSE-KMS."""
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


#: The request headers of S3's conditional writes, by boto3 parameter name.
CONDITION_HEADERS = {"IfMatch": "If-Match", "IfNoneMatch": "If-None-Match"}
_CONDITION = threading.local()


def conditional_put(s3, condition, **kwargs):
    """PutObject on ``condition`` (``{"IfNoneMatch": "*"}`` or ``{"IfMatch": etag}``), which S3 enforces.
    Glue's Python shell 3.9 bundles a botocore from before S3's conditional writes, which has no such
    parameters (it would refuse them before sending): there the same headers go on the request."""
    members = s3.meta.service_model.operation_model("PutObject").input_shape.members
    if all(name in members for name in condition):
        return s3.put_object(**kwargs, **condition)
    return put_with_condition_headers(s3, condition, **kwargs)


def put_with_condition_headers(s3, condition, **kwargs):
    """PutObject with ``condition`` sent as its HTTP headers (any botocore version)."""
    s3.meta.events.register("before-call.s3.PutObject", _add_condition_headers, unique_id=__name__ + ".condition")
    _CONDITION.headers = {CONDITION_HEADERS[name]: value for name, value in condition.items()}
    try:
        return s3.put_object(**kwargs)
    finally:
        _CONDITION.headers = None


def _add_condition_headers(params, **_):
    params["headers"].update(getattr(_CONDITION, "headers", None) or {})


def _read_with_etag(s3, bucket, key):
    """``(bytes, ETag)`` of an object, ``(None, None)`` when there is none."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except Exception as error:  # noqa: BLE001 - botocore's ClientError, told apart by its code
        if error_code(error) in ("NoSuchKey", "404", "NotFound"):
            return None, None
        raise
    return response["Body"].read(), response["ETag"]


def error_code(error):
    """The S3 error code of a botocore ClientError (its HTTP status when it has none); None for others."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return None
    return response.get("Error", {}).get("Code") or str(response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def apply_plan(s3, args, plan):
    """Make a window's planned writes: quarantine copies and reasons, then the canonical CSV. Returns
    ``(key, body)`` of the CSV written, or None."""
    for source_key, copy_key, reason_key, note in plan["quarantine"]:
        s3.copy_object(
            Bucket=args.bucket,
            Key=copy_key,
            CopySource={"Bucket": args.bucket, "Key": source_key},
        )
        body = json.dumps(note, sort_keys=True).encode("utf-8")
        s3.put_object(Bucket=args.bucket, Key=reason_key, Body=body, ContentType="application/json")
    if plan["pairs_csv"] is None:
        return None
    return write_pairs_csv(s3, args.bucket, *plan["pairs_csv"], plan.get("listed", UNLISTED))


def s3_client():
    """An S3 client from the environment, with one pooled connection per worker thread."""
    import boto3  # imported here so the package's pure functions are usable without it
    from botocore.config import Config

    return boto3.client("s3", config=Config(max_pool_connections=MAX_WORKERS))

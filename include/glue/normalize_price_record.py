"""AWS Glue Python shell job: normalize raw price records to the canonical CSV, quarantine the rest.

Runs on Glue's Python 3.9 runtime (and, unchanged, in the local stand-in's Glue runner). Standard
library plus boto3 and defusedxml only. Arguments (Glue passes ``--name value`` pairs; unknown ones,
such as Glue's own, are ignored):

    --bucket              S3 bucket
    --ingestion_prefix    raw records, ``<prefix>year=/month=/day=/<slot>...``
    --analysis_prefix     canonical CSV output, one object per slot
    --quarantine_prefix   copies of objects that could not be trusted, with a reason file
    --window_start        first slot to process, ISO 8601 (``2026-11-25T19:30:00Z``)
    --window_end          end of the range, exclusive (default: window_start + 5 minutes)
    --pair                trading pair written to each row when the record does not name one
    --max_object_bytes    objects above this size are quarantined without being read whole
    --field_aliases       JSON: canonical field -> accepted spellings (include/glue/field_aliases.json)

For every raw object of the range (in key order) it writes ``<analysis_prefix>.../<slot>.csv`` per
valid record, named by the record's own timestamp, or copies the object to the quarantine prefix
beside a reason file. The original is never changed or deleted. Output holds no wall-clock value, so
a re-run writes byte-identical objects. A summary is printed as the last line (``SUMMARY {json}``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

# --- copy of include/price_pipeline/layout.py (Glue gets this one file); tests/unit/test_layout.py
# --- checks that it agrees with the original.
SLOT_SECONDS = 300
CANONICAL_COLUMNS = (
    "timestamp",
    "pair",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "weighted_average",
    "source_key",
    "source_format",
)


def slot_stamp(slot):
    return slot.astimezone(timezone.utc).strftime("%Y%m%dT%H%MZ")


def partition(slot):
    slot = slot.astimezone(timezone.utc)
    return "year={:%Y}/month={:%m}/day={:%d}/".format(slot, slot, slot)


def ingestion_window_prefix(slot, prefix):
    return prefix + partition(slot) + slot_stamp(slot)


def analysis_key(slot, prefix):
    return prefix + partition(slot) + slot_stamp(slot) + ".csv"


def quarantine_keys(slot, source_key, prefix):
    digest = hashlib.sha256(source_key.encode("utf-8")).hexdigest()[:16]
    base = prefix + partition(slot) + slot_stamp(slot) + "/" + digest
    return base + ".object", base + ".reason.json"


# --- end of copy

NUMERIC_FIELDS = ("open", "high", "low", "close", "volume", "quote_volume", "weighted_average")
PRICE_FIELDS = ("open", "high", "low", "close", "weighted_average")
#: weighted_average may sit this far (relative) outside [low, high] before it is rejected.
RANGE_TOLERANCE = 1e-6
MAX_WORKERS = 16


class Rejected(Exception):
    """An object or record that cannot be trusted; ``str()`` is the one-line reason."""

    def __init__(self, reason, format_guess="unknown"):
        super().__init__(reason)
        self.format_guess = format_guess


# ---------------------------------------------------------------- decoding and format detection


def decode_text(data):
    """Bytes to text: UTF-8 (BOM optional) or UTF-16 with BOM; anything else is rejected."""
    if data.startswith(b"\xff\xfe") or data.startswith(b"\xfe\xff"):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as error:
            raise Rejected("not valid UTF-16: {}".format(error.reason))
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejected("not UTF-8 or UTF-16 with BOM (byte {} at {})".format(hex(data[error.start]), error.start))


def parse_object(text):
    """Detect the format of ``text`` by its content and return ``(format_name, [raw mapping, ...])``."""
    stripped = text.strip()
    if not stripped:
        raise Rejected("object is empty")
    if stripped[0] in "[{":
        try:
            return "json", _json_records(json.loads(stripped))
        except ValueError:
            raise Rejected("looks like JSON but does not parse", "json")
    lines = [line for line in stripped.splitlines() if line.strip()]
    if len(lines) >= 2 and "," in lines[0]:
        reader = csv.DictReader(io.StringIO(stripped))
        return "csv", [dict(row) for row in reader]
    raise Rejected("unrecognized format")


def _json_records(value):
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    if isinstance(value, dict):
        return [value]
    raise Rejected("JSON holds no record", "json")


# ---------------------------------------------------------------- normalization and validation


def _lookup(raw, spellings):
    for name in spellings:
        if name in raw and raw[name] not in (None, ""):
            return raw[name]
    return None


def _number(value, field):
    if isinstance(value, bool):
        raise Rejected("{} is not a number: {!r}".format(field, value))
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        try:
            number = float(str(value).strip().replace(",", ""))
        except ValueError:
            raise Rejected("{} is not a number: {!r}".format(field, str(value)[:40]))
    if not math.isfinite(number):
        raise Rejected("{} is not finite: {!r}".format(field, str(value)[:40]))
    return number


def _timestamp(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool) or str(value).strip().isdigit():
        seconds = float(value)
        if seconds > 1e11:  # milliseconds
            seconds /= 1000.0
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Rejected("timestamp not understood: {!r}".format(str(value)[:40]))
    if moment.tzinfo is None:
        raise Rejected("timestamp has no UTC offset: {!r}".format(str(value)[:40]))
    return moment.astimezone(timezone.utc)


def normalize(raw, aliases, pair, source_key, source_format):
    """One raw mapping to a validated canonical row (a dict keyed by CANONICAL_COLUMNS)."""
    stamp = _lookup(raw, aliases["timestamp"])
    if stamp is None:
        raise Rejected("record has no timestamp field", source_format)
    moment = _timestamp(stamp)
    if moment.second or moment.microsecond or moment.minute % 5:
        raise Rejected("timestamp {} is not on a 5-minute boundary".format(moment.isoformat()), source_format)
    row = {"timestamp": moment.strftime("%Y-%m-%dT%H:%M:%SZ")}
    named_pair = _lookup(raw, aliases.get("pair", ()))
    row["pair"] = str(named_pair) if named_pair is not None else pair
    for field in NUMERIC_FIELDS:
        value = _lookup(raw, aliases[field])
        row[field] = None if value is None else _number(value, field)
    if row["weighted_average"] is None:
        if row["volume"] and row["quote_volume"]:
            row["weighted_average"] = row["volume"] / row["quote_volume"]
        else:
            raise Rejected("no weighted_average, and no volume and quote_volume to derive it", source_format)
    validate(row)
    row["source_key"] = source_key
    row["source_format"] = source_format
    return row


def validate(row):
    """Reject a row whose numbers cannot be trusted."""
    for field in PRICE_FIELDS:
        if row[field] is not None and row[field] <= 0:
            raise Rejected("{} must be > 0, got {!r}".format(field, row[field]))
    for field in ("volume", "quote_volume"):
        if row[field] is not None and row[field] < 0:
            raise Rejected("{} must be >= 0, got {!r}".format(field, row[field]))
    high, low, average = row["high"], row["low"], row["weighted_average"]
    if high is not None and low is not None:
        if high < low:
            raise Rejected("high {!r} is below low {!r}".format(high, low))
        slack = RANGE_TOLERANCE * high
        if not low - slack <= average <= high + slack:
            raise Rejected("weighted_average {!r} outside [low {!r}, high {!r}]".format(average, low, high))


def to_csv(row):
    """The canonical CSV object of one row: header plus one line, floats in shortest round-trip form."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CANONICAL_COLUMNS)
    writer.writerow(["" if row[c] is None else repr(row[c]) if isinstance(row[c], float) else row[c] for c in CANONICAL_COLUMNS])
    return out.getvalue().encode("utf-8")


# ---------------------------------------------------------------- the job


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--ingestion_prefix", required=True)
    parser.add_argument("--analysis_prefix", required=True)
    parser.add_argument("--quarantine_prefix", required=True)
    parser.add_argument("--window_start", required=True)
    parser.add_argument("--window_end", default="")
    parser.add_argument("--pair", default="ETH/USDT")
    parser.add_argument("--max_object_bytes", type=int, default=1048576)
    parser.add_argument("--field_aliases", required=True)
    args, _glue_own_arguments = parser.parse_known_args(argv)
    args.aliases = json.loads(args.field_aliases)
    args.start = _timestamp(args.window_start)
    args.end = _timestamp(args.window_end) if args.window_end else args.start + timedelta(seconds=SLOT_SECONDS)
    return args


def window_slots(start, end):
    slot, slots = start, []
    while slot < end:
        slots.append(slot)
        slot += timedelta(seconds=SLOT_SECONDS)
    return slots


def list_raw_keys(s3, args):
    keys = []
    paginator = s3.get_paginator("list_objects_v2")
    for slot in window_slots(args.start, args.end):
        for page in paginator.paginate(Bucket=args.bucket, Prefix=ingestion_window_prefix(slot, args.ingestion_prefix)):
            keys.extend(item["Key"] for item in page.get("Contents", []))
    return sorted(keys)


def read_bounded(s3, bucket, key, limit):
    """Read at most ``limit`` bytes; reject larger objects without reading them whole."""
    head = s3.head_object(Bucket=bucket, Key=key)
    if head["ContentLength"] > limit:
        raise Rejected("object is {} bytes, over the {}-byte cap".format(head["ContentLength"], limit))
    body = s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-{}".format(limit))["Body"]
    data = body.read(limit + 1)
    if len(data) > limit:
        raise Rejected("object grew past the {}-byte cap while being read".format(limit))
    return data


def process_object(s3, args, key):
    """Return ``(rows, problems)`` for one raw object; raise Rejected if nothing in it can be used."""
    fmt = "unknown"
    try:
        data = read_bounded(s3, args.bucket, key, args.max_object_bytes)
        fmt, raws = parse_object(decode_text(data))
    except Rejected as error:
        raise Rejected(str(error), error.format_guess if error.format_guess != "unknown" else fmt)
    rows, problems = [], []
    for index, raw in enumerate(raws):
        try:
            rows.append(normalize(raw, args.aliases, args.pair, key, fmt))
        except Rejected as error:
            problems.append("record {}: {}".format(index, error))
    if not rows:
        reason = problems[0] if len(problems) == 1 else "; ".join(problems[:3]) or "no record found"
        raise Rejected(reason, fmt)
    return rows, problems


def quarantine(s3, args, key, reason, format_guess):
    window = slot_stamp(args.start)
    copy_key, reason_key = quarantine_keys(args.start, key, args.quarantine_prefix)
    s3.copy_object(Bucket=args.bucket, Key=copy_key, CopySource={"Bucket": args.bucket, "Key": key})
    note = {"source_key": key, "reason": reason, "format_guess": format_guess, "window": window}
    s3.put_object(Bucket=args.bucket, Key=reason_key, Body=json.dumps(note, sort_keys=True).encode("utf-8"))
    return reason_key


def run(s3, args):
    """Process every raw object of the range; return the summary dict."""
    keys = list_raw_keys(s3, args)
    summary = {"window_start": slot_stamp(args.start), "objects": len(keys), "rows": 0, "quarantined": []}
    with ThreadPoolExecutor(MAX_WORKERS) as pool:
        results = list(pool.map(lambda key: _attempt(s3, args, key), keys))
    by_slot = {}
    for key, (rows, problems, rejection) in zip(keys, results):
        if rejection is not None:
            reason, fmt = rejection
            print("QUARANTINED {}: {}".format(key, reason))
            quarantine(s3, args, key, reason, fmt)
            summary["quarantined"].append({"key": key, "reason": reason})
            continue
        for problem in problems:
            print("SKIPPED in {}: {}".format(key, problem))
        for row in rows:
            by_slot[row["timestamp"]] = row  # later keys win: key order makes it deterministic
    for stamp, row in sorted(by_slot.items()):
        slot = _timestamp(stamp)
        if not args.start <= slot < args.end:
            print("NOTE {} holds the record of slot {}, outside the window".format(row["source_key"], stamp))
    with ThreadPoolExecutor(MAX_WORKERS) as pool:
        list(pool.map(lambda row: _write(s3, args, row), by_slot.values()))
    summary["rows"] = len(by_slot)
    return summary


def _attempt(s3, args, key):
    try:
        rows, problems = process_object(s3, args, key)
        return rows, problems, None
    except Rejected as error:
        return [], [], (str(error), error.format_guess)


def _write(s3, args, row):
    key = analysis_key(_timestamp(row["timestamp"]), args.analysis_prefix)
    s3.put_object(Bucket=args.bucket, Key=key, Body=to_csv(row), ContentType="text/csv")


def main(argv=None):
    import boto3  # imported here so the pure functions above are usable without it

    args = parse_args(sys.argv[1:] if argv is None else argv)
    summary = run(boto3.client("s3"), args)
    print("SUMMARY " + json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

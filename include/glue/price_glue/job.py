"""AWS Glue Python shell job: normalize raw price records to the canonical CSV, quarantine the rest.

Runs on Glue's Python 3.9 runtime (and, unchanged, in the local stand-in's Glue runner); standard library
plus boto3 and defusedxml only. Formats, the record checks, the window contract and the tie rule are
README's "Bad input"; keys are README's "Key layout". Arguments (``--name value``; unknown ones ignored):

    --bucket              S3 bucket
    --ingestion_prefix    raw records, ``<prefix>year=/month=/day=/<slot>...``
    --analysis_prefix     canonical CSV output, ``<slot>/pairs.csv``, a row per pair
    --quarantine_prefix   copies of objects that could not be trusted, with a reason file
    --window_start        first slot to process, ISO 8601 (``2026-11-25T19:30:00Z``)
    --window_end          end of the range, exclusive (default: window_start + 5 minutes)
    --pairs               every configured pair, comma-separated, the default pair first (the legacy alias's)
    --max_object_bytes    objects above this size are quarantined without being read whole
    --field_aliases       JSON: canonical field -> accepted spellings (include/glue/field_aliases.json)

A failure inside one object is its quarantine reason, never the run's; output holds no wall-clock value, so
a re-run writes byte-identical objects. A summary is printed as the last line (``SUMMARY {json}``). A range
run also writes its CSVs as one JSON-lines object under ``<analysis_prefix>_ranges/``; a run of more than
PROCESSES_ABOVE_OBJECTS objects works from one process per CPU (one Python process tops out near 300
requests/s: botocore spends milliseconds of CPU per request).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import timedelta

from include.glue.price_glue.formats import Rejected
from include.glue.price_glue.numbers import read_timestamp
from include.glue.price_glue.s3io import (
    MAX_WORKERS,
    apply_plan,
    list_canonical_etags,
    list_raw_objects,
    read_bounded,
    s3_client,
)
from include.glue.price_glue.validation import one_line, records_of
from include.price_pipeline.layout import (
    SLOT_SECONDS,
    analysis_key,
    iso,
    quarantine_keys,
    range_objects_key,
    read_ingestion_key,
    slot_stamp,
)

#: Runs of more raw objects than this spread them over processes (one per CPU, at most MAX_PROCESSES).
PROCESSES_ABOVE_OBJECTS = 1000
MAX_PROCESSES = 4
GRAMMAR_REFUSED = (
    "key does not follow the ingestion key grammar: <slot>/<BASE>_<QUOTE>, or <slot> then '.' or '-' "
    "(the default pair's legacy alias), and no other '/'"
)
#: A record more than this after the window it was found under is refused as from the future.
FUTURE_SLACK = timedelta(days=1)

#: How much of one text from S3 a log line quotes (alerts.QUOTED_LIMIT).
QUOTED_LIMIT = 300


def quoted(text):
    """A copy of ``alerts.quoted`` (alerts.py is not in the job's bundle; tests/unit/test_glue_hostile.py
    checks the copy): S3 text quoted on one line, escaped so that it can forge no line of the log."""
    escaped = json.dumps(str(text)[:QUOTED_LIMIT], ensure_ascii=True)
    return escaped.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--ingestion_prefix", required=True)
    parser.add_argument("--analysis_prefix", required=True)
    parser.add_argument("--quarantine_prefix", required=True)
    parser.add_argument("--window_start", required=True)
    parser.add_argument("--window_end", default="")
    parser.add_argument("--pairs", default="ETH/USDT")
    parser.add_argument("--max_object_bytes", type=int, default=1048576)
    parser.add_argument("--field_aliases", required=True)
    args, _glue_own_arguments = parser.parse_known_args(argv)
    args.aliases = json.loads(args.field_aliases)
    args.pairs = list(dict.fromkeys(pair.strip() for pair in args.pairs.split(",") if pair.strip()))
    if not args.pairs:
        parser.error("--pairs names no pair")
    args.start = read_timestamp(args.window_start)
    args.end = read_timestamp(args.window_end) if args.window_end else args.start + timedelta(seconds=SLOT_SECONDS)
    return args


def process_object(s3, args, key, size=None):
    """Return ``(rows, problems)`` for one raw object of the first pair of ``--pairs``; raise Rejected if
    nothing in it can be used."""
    return records_of(read_bounded(s3, args.bucket, key, args.max_object_bytes, size), args, key, args.pairs[0])


# --- the window contract: what an object found under window W may write


def assess(data, args, key, slot, pair):
    """What the raw object ``key`` of ``pair`` (``data``: its bytes, or the Rejected raised reading them), listed
    under window ``slot``, offers it: ``{"key", "row", "reasons", "format"}``, ``row`` its one valid record of
    ``slot`` or None. Any failure inside is the object's own: it becomes a reason, never a crash."""
    outcome = {"key": key, "row": None, "reasons": [], "format": "unknown"}
    try:
        if isinstance(data, Rejected):
            raise data
        refused_times = []
        rows, problems = records_of(data, args, key, pair, refused_times)
    except Rejected as error:
        outcome.update(reasons=[str(error)], format=error.format_guess)
        return outcome
    except Exception as error:  # noqa: BLE001 - a bug meeting one object must not fail every window
        detail = " ".join(str(error).split())[:200]  # one line, bounded
        outcome["reasons"] = ["could not be processed: {}: {}".format(type(error).__name__, detail)]
        return outcome
    stamp = iso(slot)
    mine = [row for row in rows if row["timestamp"] == stamp]
    outcome["format"] = rows[0]["source_format"]
    outcome["reasons"] = problems + [_elsewhere(row["timestamp"], slot) for row in rows if row["timestamp"] != stamp]
    refused = refused_times.count(stamp)  # a refused record of the window: which one holds is unknown
    if len(mine) == 1 and not refused:
        outcome["row"] = mine[0]
    elif mine:
        outcome["reasons"].append(
            "{} records of window {} in one object{}: none is used".format(
                len(mine) + refused, stamp, ", {} of them refused".format(refused) if refused else ""
            )
        )
    return outcome


def _elsewhere(stamp, slot):
    """Why a record of slot ``stamp`` found under window ``slot`` is refused."""
    moment = read_timestamp(stamp)
    if moment >= slot + timedelta(seconds=SLOT_SECONDS) + FUTURE_SLACK:
        return "record of {} is more than a day after window {}".format(stamp, slot_stamp(slot))
    return "record of {} found under window {}: an object writes only its own window".format(stamp, slot_stamp(slot))


def plan_window(args, slot, outcomes, pair):
    """Every write the objects listed under window ``slot`` lead to, decided before any is made.

    ``outcomes`` are ``assess`` results with the key's ``version`` and the listing's ``modified`` added. The
    winner is the tie rule's (README "Bad input"); the rest of the objects with a refused record are copied to
    quarantine (the note names ``pair``, None for no configured pair).
    """
    candidates = sorted((o for o in outcomes if o["row"] is not None), key=lambda o: _order(o) + (o["key"],))
    tied = [o for o in candidates if _order(o) == _order(candidates[-1])]
    if len(tied) > 1:
        top = (
            "{} objects of window {} have version {} and LastModified {}: which is newer is unknown, none is used "
            "(write a correction with a higher -v<N>)".format(len(tied), slot_stamp(slot), *_order(tied[0]))
        )
        for outcome in candidates:  # an older one is not used either: the producer wrote a newer record since
            outcome["reasons"].append(top if outcome in tied else "older than the window's newest records; " + top)
        candidates = []
    newer = [o for o in outcomes if o["row"] is None and candidates and o["version"] > candidates[-1]["version"]]
    if newer:  # a correction was refused: the record it corrects is not used instead of it
        correction = max(newer, key=_order)
        why = "the window's correction {} (version {}) was refused: none is used".format(
            quoted(correction["key"]), correction["version"]
        )
        for outcome in candidates:
            outcome["reasons"].append(why)
        candidates = []
    plan = {"window": slot_stamp(slot), "row": None, "used": None, "quarantine": []}
    plan["superseded"] = [o["key"] for o in candidates[:-1]]
    if candidates:
        plan["used"] = candidates[-1]["key"]
        superseded = json.dumps(plan["superseded"]) if plan["superseded"] else ""
        plan["row"] = dict(candidates[-1]["row"], superseded=superseded)
    for outcome in sorted(outcomes, key=lambda o: o["key"]):
        if outcome["reasons"]:
            copy_key, reason_key = quarantine_keys(slot, outcome["key"], args.quarantine_prefix)
            note = {
                "source_key": outcome["key"],
                "reason": one_line(outcome["reasons"]),
                "format_guess": outcome["format"],
                "window": plan["window"],
                "record_used": outcome["key"] == plan["used"],
            }
            if pair:
                note["pair"] = pair
            plan["quarantine"].append((outcome["key"], copy_key, reason_key, note))
    return plan


def _order(outcome):
    """Which of a window's candidate objects is the newer: the key's version, then its LastModified."""
    return outcome["version"], outcome["modified"]


def plan_pairs(args, slot, plans):
    """The pairs' plans of window ``slot`` as one: their quarantine writes, and the rows of the one CSV
    ``analysis_key(slot)`` (S3 bills a PUT per object, whatever its size)."""
    rows = [plan["row"] for plan in plans if plan["row"] is not None]
    return {
        "window": slot_stamp(slot),
        "pairs_csv": (analysis_key(slot, args.analysis_prefix), rows) if rows else None,
        "quarantine": [item for plan in plans for item in plan["quarantine"]],
    }


def run(s3, args, spread=False):
    """Process every raw object of the range; return the summary dict. Each object is assessed against the
    window it is listed under (the listing gives its size and LastModified), then each window's writes are
    planned and made. With ``spread``, a long run works from several processes (``worker_processes``)."""
    objects = list_raw_objects(s3, args)
    processes = worker_processes(len(objects)) if spread else 1
    results = _each(s3, args, _read_listed, objects, processes)
    by_window = {}
    for (_key, _size, slot, modified), outcome in zip(objects, results):  # noqa: B905 - no strict= on 3.9
        pair = outcome.pop("pair")
        by_window.setdefault((slot, pair or ""), []).append(dict(outcome, modified=modified))
    windows = sorted(by_window)
    plans = [plan_window(args, slot, by_window[(slot, pair)], pair) for slot, pair in windows]
    summary = {"window_start": slot_stamp(args.start), "objects": len(objects), "rows": 0}
    summary.update(quarantined=[], superseded=[])
    for plan in plans:
        for source_key, _copy, _reason, note in plan["quarantine"]:
            print("QUARANTINED {}: {}".format(quoted(source_key), note["reason"]))
            summary["quarantined"].append({"key": source_key, "reason": note["reason"]})
        if plan["superseded"]:
            for key in plan["superseded"]:
                used = quoted(plan["used"])
                print("SUPERSEDED in window {}: {} (by the newer {})".format(plan["window"], quoted(key), used))
                summary["superseded"].append({"window": plan["window"], "key": key, "by": plan["used"]})
    by_slot = {}
    for (slot, _pair), plan in zip(windows, plans):  # noqa: B905 - no strict= on 3.9
        by_slot.setdefault(slot, []).append(plan)
    writes = [plan_pairs(args, slot, group) for slot, group in sorted(by_slot.items())]
    stored = list_canonical_etags(s3, args)
    for write in writes if stored is not None else ():
        if write["pairs_csv"] is not None:
            write["listed"] = stored.get(write["pairs_csv"][0])
    written = [item for item in _each(s3, args, apply_plan, writes, processes) if item is not None]
    summary["rows"] = len(written)
    if args.end - args.start > timedelta(seconds=SLOT_SECONDS):
        summary["range_objects_key"] = write_range_objects(s3, args, written)
    return summary


def range_objects(written):
    """The JSON-lines body of a range's canonical objects: one ``{"body", "key"}`` line each, in key order."""
    lines = [json.dumps({"body": body.decode("utf-8"), "key": key}, sort_keys=True) for key, body in written]
    return "".join(line + "\n" for line in sorted(lines)).encode("utf-8")


def write_range_objects(s3, args, written):
    """Write every canonical object of this range run in one more object (after all of them, so it never
    names one that is not there yet); the bulk analysis reads it instead of one object per window."""
    key = range_objects_key(args.start, args.end, args.analysis_prefix)
    s3.put_object(Bucket=args.bucket, Key=key, Body=range_objects(written), ContentType="application/x-ndjson")
    return key


def worker_processes(objects, cpus=None):
    """How many processes a run over ``objects`` raw objects uses: 1 up to PROCESSES_ABOVE_OBJECTS,
    else one per CPU, at most MAX_PROCESSES."""
    if objects <= PROCESSES_ABOVE_OBJECTS:
        return 1
    return max(1, min(MAX_PROCESSES, cpus or os.cpu_count() or 1))


def _each(s3, args, task, items, processes):
    """``[task(s3, args, item) for item in items]``, in order, from MAX_WORKERS threads per process."""
    if processes <= 1 or len(items) < 2:
        return _threaded(s3, args, task, items)
    size = -(-len(items) // processes)
    chunks = [items[start : start + size] for start in range(0, len(items), size)]
    with ProcessPoolExecutor(len(chunks)) as pool:
        parts = pool.map(_in_process, [task] * len(chunks), [args] * len(chunks), chunks)
        return [result for part in parts for result in part]


def _threaded(s3, args, task, items):
    with ThreadPoolExecutor(MAX_WORKERS) as pool:
        return list(pool.map(lambda item: task(s3, args, item), items))


def _in_process(task, args, items):
    """One worker process's share: its own client (a client never crosses a process boundary)."""
    return _threaded(s3_client(), args, task, items)


def _read_listed(s3, args, listed):
    """Read one listed object (an S3 error fails the run, to be retried) and assess it (never raises)."""
    key, size, slot, _modified = listed
    configured = args.pairs
    pair, version = read_ingestion_key(key, slot, args.ingestion_prefix, configured[0]) or (None, 1)
    if pair not in configured:
        if pair is None:
            reason = GRAMMAR_REFUSED
        else:
            reason = "key names pair {}, not one of the configured pairs ({})".format(pair, ", ".join(configured))
        return {"key": key, "row": None, "reasons": [reason], "format": "unknown", "pair": None, "version": version}
    try:
        data = read_bounded(s3, args.bucket, key, args.max_object_bytes, size)
    except Rejected as error:
        data = error
    return dict(assess(data, args, key, slot, pair), pair=pair, version=version)


def peak_memory_mib():
    """``{"job": MiB, "largest_worker": MiB}``: the peak resident memory of this process and of its largest
    worker process (Linux ``ru_maxrss``, KiB); a Python shell job of 0.0625 DPU has 1 GB."""
    import resource

    return {
        "job": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "largest_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
    }


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    summary = run(s3_client(), args, spread=True)
    summary["peak_memory_mib"] = peak_memory_mib()
    print("SUMMARY " + json.dumps(summary, sort_keys=True))
    return 0

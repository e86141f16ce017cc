"""Bulk price history: the ``price_history_backfill`` DAG's analysis of a range its one Glue run normalized,
every pair's windows in one pass, through the live DAG's own functions (no Airflow here).

It reads every canonical CSV the range needs (the Glue run's range object, else S3 with a bounded pool),
decides every window (``rules.evaluate``, ``ledger.pair_entry``, freshness for run type ``backfill``) so each
ledger object is byte-identical to what ``price_notification`` writes, writes the ledger (``ledger.merged``
over conditional writes: a claimed line is never overwritten) and each pair's monthly Parquet, publishes
the due rules with ``notify_on_backfill`` (``ledger.publish_alerts``) and builds ops' one message of a range
with quarantined objects (:func:`report_quarantine`). A range with no usable window raises NoUsableWindow.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from include.price_pipeline import alerts, layout, rules, store
from include.price_pipeline.analysis import FIRED, PUBLISHING, Price, due_for_subscribers
from include.price_pipeline.settings import Config

log = logging.getLogger(__name__)

#: Ops notification (SnsNotifier failure callback) of the bulk DAG; its runs have no data interval.
OPS_SUBJECT = "[price pipeline] Backfill failed: {{ ti.task_id }} from {{ params.start }}"
OPS_MESSAGE = """\
Task {{ ti.task_id }} failed for the range {{ params.start }} to {{ params.end }} (end excluded).
Reason: {{ exception }}
DAG: {{ dag.dag_id }}, run {{ run_id }}, try {{ ti.try_number }}
Log: {{ ti.log_url }}
"""

#: A window start as the DAG's ``start`` and ``end`` params take it: UTC, on a 5-minute boundary.
WINDOW_START_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d[05]:00Z$"
#: Run timeout of the one Glue job run of a range (the job's own 10 minutes are sized for one window).
GLUE_RANGE_TIMEOUT_MINUTES = 120
#: How many of the largest moves the summary lists.
LARGEST_MOVES = 5
#: How many missing windows the summary names (it always counts all of them).
MISSING_NAMED = 20
#: The ops message of a range with quarantined objects reads at most this many reason files (spread
#: evenly over the range's, in key order) to name the commonest reasons; it always counts all of them.
QUARANTINE_NOTES_READ = 500
#: How many of the commonest quarantine reasons the ops message lists.
COMMON_REASONS = 5

FLOAT_COLUMNS = ("open", "high", "low", "close", "volume", "quote_volume", "weighted_average")
STRING_COLUMNS = ("pair", "source_key", "source_format")


class NoUsableWindow(ValueError):
    """Every window of the range is missing or quarantined: a green run would have done nothing."""


# ------------------------------------------------------------------------------ pure analysis


def parse_window_start(text: str) -> datetime:
    """An ISO 8601 UTC time on a 5-minute boundary (``2025-03-10T00:00:00Z``) as an aware datetime."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None or moment.utcoffset().total_seconds() != 0:
        raise ValueError(f"{text!r} is not a UTC time (end it with Z)")
    moment = moment.astimezone(UTC)
    if moment != layout.slot_start(moment):
        raise ValueError(f"{text!r} is not a window start (a 5-minute boundary)")
    return moment


def summarize(entries: dict[datetime, dict[str, dict]], start: datetime, end: datetime, quarantined: int) -> dict:
    """Counts for the task log and XCom: windows seen (any pair's record) and missing, quarantined objects,
    breaches (firings before the cooldown and freshness: sent or not), each rule decision, the largest
    moves of change rules, and per pair its windows and decisions."""
    missing = [slot for slot in layout.slots_between(start, end) if slot not in entries]
    decided = [(slot, entry, name, rule) for slot, by_pair in sorted(entries.items())
               for entry in by_pair.values() for name, rule in entry["rules"].items()]  # fmt: skip
    moved = sorted(
        ((slot, e, n, r) for slot, e, n, r in decided if r["kind"] == rules.CHANGE and r["change_pct"] is not None),
        key=lambda item: (-abs(item[3]["change_pct"]), item[0], item[1]["pair"], item[2]),
    )
    by_pair: dict[str, Counter] = {}
    for _, entry, _, rule in decided:
        by_pair.setdefault(entry["pair"], Counter())[rule["decision"]] += 1
    windows_of = Counter(pair for in_window in entries.values() for pair in in_window)
    return {
        "start": layout.iso(start),
        "end": layout.iso(end),
        "windows": len(entries) + len(missing),
        "windows_seen": len(entries),
        "missing": len(missing),
        "missing_windows": [layout.iso(slot) for slot in missing[:MISSING_NAMED]],
        "quarantined": quarantined,
        "breaches": sum(1 for *_, rule in decided if rule["decision"] in FIRED),
        "decisions": dict(sorted(Counter(rule["decision"] for *_, rule in decided).items())),
        "largest_moves": [
            {
                "window_start": layout.iso(slot),
                "pair": entry["pair"],
                "rule": name,
                "change_pct": round(rule["change_pct"], 4),
                "decision": rule["decision"],
            }
            for slot, entry, name, rule in moved[:LARGEST_MOVES]
        ],  # fmt: skip
        "pairs": {
            pair: {"windows": windows_of[pair], "decisions": dict(sorted(counts.items()))}
            for pair, counts in sorted(by_pair.items())
        },  # fmt: skip
    }


# ------------------------------------------------------------------------------ Parquet


def canonical_rows(body: bytes) -> list[dict]:
    """The rows of a canonical CSV object, typed for Parquet (numbers float or None, timestamp aware)."""
    rows = []
    for raw in csv.DictReader(io.StringIO(body.decode("utf-8"))):
        row = {"timestamp": datetime.fromisoformat(raw["timestamp"].replace("Z", "+00:00"))}
        row.update({column: float(raw[column]) if raw[column] != "" else None for column in FLOAT_COLUMNS})
        row.update({column: raw[column] for column in STRING_COLUMNS})
        rows.append(row)
    return rows


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


# ------------------------------------------------------------------------------ S3


def range_objects(s3, bucket: str, key: str) -> dict[str, bytes]:
    """``{key: bytes}`` of the canonical CSVs a Glue range run wrote (its ``_ranges/`` object); ``{}`` if
    there is none (a one-window range, or a range the job has not run over)."""
    body = store.read_bytes(s3, bucket, key)
    if body is None:
        return {}
    lines = (json.loads(line) for line in body.decode("utf-8").splitlines() if line)
    return {line["key"]: line["body"].encode("utf-8") for line in lines}


def read_canonical(s3, bucket: str, keys: list[str], range_key: str) -> tuple[dict[str, bytes], int]:
    """(``{key: bytes}`` of the listed canonical CSVs ``keys``, how many came from the range object).

    The listing decides which windows have a CSV; the bytes of each come from the Glue run's range object
    when it wrote that key (the same bytes it put there, one GET instead of thousands), else from S3.
    """
    written = range_objects(s3, bucket, range_key)
    known = {key: written[key] for key in keys if key in written}
    rest = [key for key in keys if key not in known]
    read = {key: body for key, body in zip(rest, store.read_many(s3, bucket, rest), strict=True) if body is not None}
    return known | read, len(known)


def list_with_etags(s3, bucket: str, prefixes: Iterable[str]) -> dict[str, str]:
    """``{key: ETag without quotes}`` of every object under each of ``prefixes`` (listed in parallel)."""

    def listing(prefix: str) -> dict[str, str]:
        found = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.update({item["Key"]: item["ETag"].strip('"') for item in page.get("Contents", [])})
        return found

    out: dict[str, str] = {}
    for found in store.in_parallel(s3, listing, list(prefixes)):
        out.update(found)
    return out


def all_month_keys(s3, config: Config, start: datetime, end: datetime) -> list[str]:
    """Every canonical CSV key (every pair's) of each month of ``[start, end)``: one listing per month."""
    keys = []
    for year, month in layout.months_between(start, end - layout.SLOT):
        month_prefix = layout.month_analysis_prefix(year, month, config.analysis_prefix)
        keys.extend(
            k
            for k in store.list_keys(s3, config.bucket, month_prefix)
            if store.canonical_slot(k, config.analysis_prefix)
        )
    return keys


def objects_seen(reason_keys: Iterable[str], prices: Iterable[Price], quarantine_prefix: str) -> int:
    """How many raw objects the range's outcome comes from: every quarantined one (``reason_keys``) and
    every one a canonical CSV of the range names (``source_key``, ``superseded``), each once: a used
    object that was also quarantined (``record_used``) is known by its reason key, derived from its key."""
    known = set(reason_keys)
    for price in prices:
        for source in (price.source_key, *price.superseded):
            known.add(layout.quarantine_keys(price.slot, source, quarantine_prefix)[1])
    return len(known)


# A value the Glue job quotes in a reason (``_clip``: Python's repr, in ' or "), standing as a word of two
# characters or more (the key grammar's own '.', '-' and '/' stay), and a number, time or date standing as
# a word (not the 5 of "5-minute"): what varies between two objects refused for the same reason.
_QUOTED_VALUE = re.compile(r"""(?<![^\s(\[:=])(?:'(?:[^'\\]|\\.){2,}'|"(?:[^"\\]|\\.){2,}")(?![^\s,;)\]])""")
_NUMBER_WORD = re.compile(r"(?<![\w.])[-+]?\d[\d.eE:+TZ-]*(?![\w-])")
_RECORD_NUMBER = re.compile(r"^record \d+: ")


def reason_kind(reason: str) -> str:
    """What a quarantine reason says, without what varies: its first reason only (a note joins up to
    three with "; "), without "record N: ", quoted values as '...' and numbers, times and dates as N."""
    first = _RECORD_NUMBER.sub("", str(reason).split("; ")[0].strip())
    return _NUMBER_WORD.sub("N", _QUOTED_VALUE.sub("'...'", first)) or "(no reason given)"


def quarantine_report(summary: dict, notes: list[dict], run_url: str) -> tuple[str, str]:
    """(subject, message) telling ops what the range run of ``summary`` left quarantined: the counts and
    the COMMON_REASONS commonest kinds of reason among ``notes`` (see reason_kind), most objects first,
    each with one example object and its full reason. Every text read from S3 is alerts.quoted."""
    quarantined, objects = summary["quarantined"], max(summary.get("objects", 0), summary["quarantined"])
    start, end = (f"{summary[bound][:16]}Z" for bound in ("start", "end"))
    subject = f"[price pipeline] Quarantined in range {start}..{end}: {quarantined} of {objects} objects"
    kinds: dict[str, list[dict]] = {}
    for note in sorted(notes, key=lambda note: note["key"]):
        kinds.setdefault(reason_kind(note.get("reason", "")), []).append(note)
    common = sorted(kinds.items(), key=lambda item: (-len(item[1]), item[0]))[:COMMON_REASONS]
    sample = (
        "" if len(notes) == quarantined else f" (from the reason files of {len(notes)} of them, spread over the range)"
    )
    lines = [
        f"The bulk analysis of {summary['start']} to {summary['end']} (end excluded) succeeded, but the Glue job "
        f"quarantined {quarantined} of {objects} objects of the range: {summary['windows_seen']} of "
        f"{summary['windows']} windows have a usable record, {summary['missing']} have none.",
        "",
        f"Commonest reasons{sample}:",
    ]
    for kind, examples in common:
        example = examples[0]
        lines += [
            f"- {len(examples)} object{'' if len(examples) == 1 else 's'}: {alerts.quoted(kind)}",
            f"  e.g. {alerts.quoted(example.get('source_key', ''))}: {alerts.quoted(example.get('reason', ''))}",
        ]
    if len(kinds) > len(common):
        lines.append(f"- and {len(kinds) - len(common)} other kinds of reason")
    lines += [
        "",
        "Each object's copy and reason file are under the quarantine prefix, in its window's folder.",
        f"Run: {run_url}",
    ]
    return alerts.check_subject(subject[: alerts.SUBJECT_LIMIT]), "\n".join(lines) + "\n"


def report_quarantine(s3, config: Config, summary: dict, run_url: str) -> tuple[str, str] | None:
    """The ops (subject, message) of a range run whose range holds quarantined objects, else None."""
    if not summary.get("quarantined"):
        return None
    start, end = parse_window_start(summary["start"]), parse_window_start(summary["end"])
    keys = store.quarantine_reason_keys(s3, config.bucket, config.quarantine_prefix, start, end)
    notes = store.read_notes(s3, config.bucket, keys[:: max(1, math.ceil(len(keys) / QUARANTINE_NOTES_READ))])
    return quarantine_report(summary, notes, run_url)


def write_ledger(s3, bucket: str, prefix: str, objects: dict[str, bytes], first: datetime, last: datetime) -> dict:
    """Write each window's ledger object unless the stored one holds the same (``ledger.merged``: each
    pair's ``publishing`` or ``notified`` entry is kept, the others replaced); return the counts.

    One listing per day partition gives each stored object's ETag: an object whose ETag is the MD5 of the
    new bytes is identical and left alone (with SSE-KMS, ETags are no MD5 and every stored object is read
    instead). Writes are conditional (``store.update``), so an entry claimed or notified by a live run in
    the meantime is re-read and kept, never overwritten.
    """
    from include.price_pipeline import ledger

    days = [f"{prefix}{day}" for day in layout.day_partitions(first, last)] if objects else []
    stored = list_with_etags(s3, bucket, days)

    def settle(key: str) -> str:
        new = objects[key]
        if stored.get(key) == store.md5(new):
            return "unchanged"

        def change(body: bytes | None) -> bytes:
            merged = ledger.merged(ledger.parse_entries(body, key), ledger.parse_entries(new, key)) if body else None
            return new if merged is None else ledger.entries_bytes(merged)

        return "written" if store.update(s3, bucket, key, change, store.NDJSON, key in stored)[1] else "unchanged"

    counts = Counter(store.in_parallel(s3, settle, sorted(objects)))
    return {name: counts.get(name, 0) for name in ("written", "unchanged")}


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
    stored = list_with_etags(s3, bucket, [layout.parquet_key(y, m, pair, prefix) for y, m in by_month])
    out = []
    for (year, month), rows in sorted(by_month.items()):
        key, body = layout.parquet_key(year, month, pair, prefix), parquet_bytes(rows)
        changed = stored.get(key) != store.md5(body)
        if changed:
            store.write_bytes(s3, bucket, key, body, "application/vnd.apache.parquet")
        out.append({"key": key, "rows": len(rows), "bytes": len(body), "written": changed})
    return out


# ------------------------------------------------------------------------------ the task


def backfill_history(
    s3,
    config: Config,
    start: datetime,
    end: datetime,
    rule_set: rules.Rules,
    notify_on_backfill: bool,
    now: datetime,
    publish: Callable[[dict], str] | None = None,
    run_url: str = "",
    parquet_prefix: str = layout.PARQUET_PREFIX,
    claimant: str = "",
) -> dict:
    """Analyse every pair's windows of ``[start, end)`` from the canonical CSVs, write the ledger and the
    monthly Parquet, claim and publish due rules when allowed (``publish``, with ``notify_on_backfill``);
    return the summary (also logged). The rules are the run's (``rules.with_overrides``: its params override
    a named pair's rule).

    Raises NoUsableWindow when no window of the range has a record (all missing or quarantined), and
    alerts.ClaimsLeft (after everything else is written) when an earlier try of this run left claims."""
    from include.price_pipeline import ledger

    if end <= start:
        raise ValueError(f"end {layout.iso(end)} is not after start {layout.iso(start)}")
    history, seconds, started = rule_set.history(), {}, [time.monotonic()]

    def done(phase: str) -> None:  # wall-clock seconds of each phase, for the log and XCom (never in S3)
        started.append(time.monotonic())
        seconds[phase] = round(started[-1] - started[-2], 3)

    month_keys = all_month_keys(s3, config, start, end)
    before = store.csv_keys(s3, config.bucket, config.analysis_prefix, start - history, start - layout.SLOT) \
        if history else set()  # fmt: skip
    range_key = layout.range_objects_key(start, end, config.analysis_prefix)
    bodies, from_range = read_canonical(s3, config.bucket, sorted(set(month_keys) | before), range_key)
    done("read_csv")
    prices: dict[str, list[Price]] = {pair: [] for pair in rule_set.pairs}
    unreadable = {}  # a CSV that is not canonical holds no record (nor Parquet rows); the summary names it
    for key in sorted(bodies, key=layout.slot_of_key):
        try:
            read = store.csv_prices(bodies[key])
        except ValueError as error:
            unreadable[key] = str(error)
            log.warning("%s is not canonical, read as no record: %s", key, error)
            continue
        for pair, price in read.items():
            if pair in prices and start - history <= price.slot < end:
                prices[pair].append(price)
    due, why_not_due = due_for_subscribers("backfill", end, now, config.max_alert_age_minutes, notify_on_backfill)
    entries: dict[datetime, dict[str, dict]] = {}
    for pair, pair_rules in rule_set.pairs.items():
        series = rules.Series(prices[pair])
        for price in series.prices[bisect.bisect_left(series.slots, start) :]:
            decided = {rule.name: rules.evaluate(rule, series, price.slot) for rule in pair_rules}
            entry = ledger.pair_entry(pair, price.slot, price, pair_rules, decided, due, why_not_due)
            claimed = {"claimed_by": claimant} if entry["decision"] == PUBLISHING else {}
            entries.setdefault(price.slot, {})[pair] = entry | claimed
    reason_keys = store.quarantine_reason_keys(s3, config.bucket, config.quarantine_prefix, start, end)
    summary = summarize(entries, start, end, len(reason_keys))
    in_range = (price for series in prices.values() for price in series if price.slot >= start)
    summary["objects"] = objects_seen(reason_keys, in_range, config.quarantine_prefix)
    summary["canonical_csvs"] = {"from_range_object": from_range, "read": len(bodies) - from_range,
                                 "not_canonical": dict(sorted(unreadable.items())[:MISSING_NAMED])}  # fmt: skip
    if not entries:
        raise NoUsableWindow(
            f"no usable window from {summary['start']} to {summary['end']}: {summary['windows']} windows, "
            f"{summary['missing']} without a canonical record, {summary['quarantined']} quarantined objects"
        )
    done("analyse")
    objects = {layout.pairs_ledger_key(slot, config.changes_prefix): ledger.entries_bytes(by_pair)
               for slot, by_pair in entries.items()}  # fmt: skip
    due_alerts = {slot: [alert for entry in by_pair.values() for alert in ledger.due_alerts(entry, run_url)]
                  for slot, by_pair in sorted(entries.items())}  # fmt: skip
    summary["ledger"] = write_ledger(s3, config.bucket, config.changes_prefix, objects, start, end - layout.SLOT) | {
        "due": sum(len(alerts_) for alerts_ in due_alerts.values())
    }
    done("write_ledger")
    readable = {key: body for key, body in bodies.items() if key not in unreadable}
    summary["parquet"] = write_parquet(s3, config.bucket, parquet_prefix, readable, month_keys, rule_set)
    done("write_parquet")
    published = {"sent": 0, "skipped": [], "left": [], "failed": []}
    for slot, due_now in due_alerts.items() if publish else ():
        result = ledger.publish_alerts(s3, config, slot, due_now, claimant, publish) if due_now else {}
        published["sent"] += len(result.get("sent", {}))
        for outcome in ("skipped", "left", "failed"):
            published[outcome] += result.get(outcome, [])
    summary["notified"] = published["sent"]
    summary["not_published"] = len(published["skipped"])
    done("publish")
    summary["seconds"] = seconds
    log_summary(summary)
    for reason in published["skipped"]:
        log.warning("%s", reason)
    if published["left"]:
        raise alerts.ClaimsLeft("; ".join(published["left"]))
    if published["failed"]:  # not sent: the task's retry analyses the range again and publishes them
        raise RuntimeError("; ".join(published["failed"]))
    return summary


def log_summary(summary: dict) -> None:
    """A few readable lines for the task log."""
    log.info("Range %s to %s: %d windows, %d seen, %d missing (%d quarantined objects), %d breaches; decisions %s; "
             "ledger %s; canonical CSVs %s", *(summary[k] for k in ("start", "end", "windows", "windows_seen",
             "missing", "quarantined", "breaches", "decisions", "ledger", "canonical_csvs")))  # fmt: skip
    for pair, counts in summary["pairs"].items():
        log.info("%s: %d windows, %s", pair, counts["windows"], counts["decisions"])
    if summary["missing_windows"]:
        log.info("First missing windows: %s", ", ".join(summary["missing_windows"]))
    for move in summary["largest_moves"]:
        log.info("Largest move: %s %s rule %s %+.4f%% (%s)", *move.values())
    for item in summary["parquet"]:
        log.info(
            "Parquet %s: %d rows, %d bytes, %s", *list(item.values())[:3], "written" if item["written"] else "unchanged"
        )
    log.info("Notified subscribers of %d alerts; %d due were notified or claimed elsewhere: not published here; "
             "seconds per phase: %s", summary["notified"], summary["not_published"], summary["seconds"])  # fmt: skip

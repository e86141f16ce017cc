"""Bulk price history: every window of a range analysed in one pass, its ledger and monthly Parquet.

Task bodies of the ``price_history_backfill`` DAG, after its one Glue job run has normalized the range:

1. read every canonical CSV the range needs (the range, the lookback before it, and the rest of each
   month it touches, for Parquet): those the Glue run wrote from its one range object, the others
   with a bounded pool of threads;
2. decide every window with the live DAG's own rules (``rules.evaluate``, :func:`analysis.apply_freshness`,
   :func:`analysis.due_for_subscribers` for run type ``backfill``), so each ledger entry is byte-identical
   to the one ``price_notification`` writes for the same window and params;
3. write the ledger entries that differ from what is stored, never over a ``publishing`` or ``notified``
   one (conditional writes: an entry claimed or notified meanwhile is seen, not overwritten);
4. rewrite each month's Parquet object from all canonical CSVs of that month (deterministic bytes);
5. with ``notify_on_backfill``, claim each due breach as the live DAG does (``windows.claim``) and publish
   only the claims that landed, through a callable the task passes;
6. when the range holds quarantined objects, build ops' one message of the run (:func:`report_quarantine`):
   the counts and the commonest kinds of reason, each with a quoted example.

A range with no usable window (every one missing or quarantined) raises NoUsableWindow with the counts.

S3 goes through a boto3 client (``S3Hook(...).get_conn()`` in the task); no Airflow here.
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
from dataclasses import dataclass
from datetime import UTC, datetime

from include.price_pipeline import alerts, layout, rules, store, windows
from include.price_pipeline.analysis import (
    CLAIMED,
    NOTIFIED,
    NOTIFY,
    PUBLISHING,
    SUPPRESSED_COOLDOWN,
    Price,
    apply_freshness,
    due_for_subscribers,
    parse_canonical_csv,
)
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


class ClaimsLeft(RuntimeError):
    """Windows this run claimed in an earlier try are still ``publishing``: they may have been sent."""


@dataclass(frozen=True)
class Window:
    """One analysed window of the default pair: its price, what its rule decided, and the decision with its
    reason after the freshness rule."""

    latest: Price
    decided: rules.Decision
    decision: str
    reason: str

    @property
    def slot(self) -> datetime:
        return self.latest.slot

    def entry(self, rule: rules.Rule) -> dict:
        """The window's ledger entry."""
        return alerts.ledger_entry(self.latest, rule, self.decided, self.decision, self.reason)


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


def analyse_series(
    prices: Iterable[Price],
    start: datetime,
    end: datetime,
    rule: rules.Rule,
    notify_on_backfill: bool,
    now: datetime,
    max_alert_age_minutes: int,
) -> list[Window]:
    """The decision of every window in ``[start, end)`` that has a price, in slot order.

    ``prices`` (one per slot) should reach back to ``start - rule.history``. Each window gets exactly what
    ``windows.analyse_window`` gives it in a native backfill run: the same rule over the same series and
    the same freshness rule for run type ``backfill``.
    """
    series = rules.Series(list(prices))
    out = []
    for latest in series.prices[bisect.bisect_left(series.slots, start) : bisect.bisect_left(series.slots, end)]:
        due, why_not_due = due_for_subscribers(
            "backfill", latest.slot + layout.SLOT, now, max_alert_age_minutes, notify_on_backfill
        )
        decided = rules.evaluate(rule, series, latest.slot)
        out.append(Window(latest, decided, *apply_freshness(decided.decision, decided.reason, due, why_not_due)))
    return out


def ledger_objects(analysed: Iterable[Window], rule: rules.Rule, prefix: str) -> dict[str, bytes]:
    """``{ledger key: bytes}`` of every window not due for publishing (due ones are written once sent)."""
    return {
        layout.ledger_key(window.slot, prefix): alerts.ledger_bytes(window.entry(rule))
        for window in analysed
        if window.decision != NOTIFY
    }


def summarize(
    analysed: list[Window],
    start: datetime,
    end: datetime,
    quarantined: int,
) -> dict:
    """Counts for the task log and XCom: windows seen and missing, quarantined, breaches, largest moves."""
    seen = {window.slot for window in analysed}
    missing = [slot for slot in layout.slots_between(start, end) if slot not in seen]
    moved = sorted(
        (w for w in analysed if w.decided.change_pct is not None),
        key=lambda w: (-abs(w.decided.change_pct), w.slot),
    )
    return {
        "start": layout.iso(start),
        "end": layout.iso(end),
        "windows": len(seen) + len(missing),
        "windows_seen": len(seen),
        "missing": len(missing),
        "missing_windows": [layout.iso(slot) for slot in missing[:MISSING_NAMED]],
        "quarantined": quarantined,
        "breaches": sum(1 for w in analysed if w.decided.decision in (NOTIFY, SUPPRESSED_COOLDOWN)),
        "decisions": dict(sorted(Counter(w.decision for w in analysed).items())),
        "largest_moves": [
            {"window_start": layout.iso(w.slot), "change_pct": round(w.decided.change_pct, 4), "decision": w.decision}
            for w in moved[:LARGEST_MOVES]
        ],
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


def read_all(s3, bucket: str, keys: list[str]) -> dict[str, bytes]:
    """``{key: bytes}`` of every key that exists, read in parallel."""
    bodies = store.read_many(s3, bucket, keys)
    return {key: body for key, body in zip(keys, bodies, strict=True) if body is not None}


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
    return known | read_all(s3, bucket, [key for key in keys if key not in known]), len(known)


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
        keys.extend(k for k in store.list_keys(s3, config.bucket, month_prefix) if k.endswith(".csv"))
    return keys


def canonical_keys(s3, config: Config, start: datetime, end: datetime, rule: rules.Rule) -> tuple[list, list]:
    """(keys the analysis needs, keys of every month touched by the range) of canonical CSVs.

    The analysis needs ``[start - rule.history, end)``; Parquet needs every CSV of each month of ``[start, end)``.
    """
    last = end - layout.SLOT
    month_keys = [key for key in all_month_keys(s3, config, start, end) if not layout.is_pairs_key(key)]
    first_key = layout.analysis_key(start, config.analysis_prefix)
    last_key = layout.analysis_key(last, config.analysis_prefix)
    in_range = [key for key in month_keys if first_key <= key <= last_key]
    before = store.analysis_keys_between(
        s3, config.bucket, config.analysis_prefix, start - rule.history, start - layout.SLOT
    )
    return before + in_range, month_keys


def quarantined_reason_keys(s3, config: Config, start: datetime, end: datetime) -> list[str]:
    """The reason files the Glue job left for windows of ``[start, end)``, in key order: one listing
    per day partition (a reason file's key names its window, never its reason: that is inside)."""
    slots = layout.slots_between(start, end)
    if not slots:
        return []
    wanted = {layout.quarantine_window_prefix(slot, config.quarantine_prefix) for slot in slots}
    days = [f"{config.quarantine_prefix}{day}" for day in layout.day_partitions(slots[0], slots[-1])]
    length = len(next(iter(wanted)))
    keys = list_with_etags(s3, config.bucket, days)
    return sorted(key for key in keys if key.endswith(".reason.json") and key[:length] in wanted)


def count_quarantined(s3, config: Config, start: datetime, end: datetime) -> int:
    """Reason files the Glue job left for windows of ``[start, end)``."""
    return len(quarantined_reason_keys(s3, config, start, end))


def objects_seen(reason_keys: Iterable[str], prices: Iterable[Price], quarantine_prefix: str) -> int:
    """How many raw objects the range's outcome comes from: every quarantined one (``reason_keys``) and
    every one a canonical CSV of the range names (``source_key``, ``superseded``), each once: a used
    object that was also quarantined (``record_used``) is known by its reason key, derived from its key."""
    known = set(reason_keys)
    for price in prices:
        for source in (price.source_key, *price.superseded):
            known.add(layout.quarantine_keys(price.slot, source, quarantine_prefix)[1])
    return len(known)


def read_quarantine_notes(s3, bucket: str, reason_keys: list[str]) -> list[dict]:
    """Up to QUARANTINE_NOTES_READ of the reason files ``reason_keys``, spread evenly over them, read in
    parallel; each as ``{"key": reason key, "source_key", "reason"}``. A file gone
    meanwhile, or not a JSON object, is left out."""
    step = max(1, math.ceil(len(reason_keys) / QUARANTINE_NOTES_READ))
    chosen = reason_keys[::step]
    notes = []
    for key, body in zip(chosen, store.read_many(s3, bucket, chosen), strict=True):
        try:
            note = json.loads(body) if body is not None else None
        except ValueError:
            note = None
        if isinstance(note, dict):
            notes.append(
                {"key": key, "source_key": str(note.get("source_key", "")), "reason": str(note.get("reason", ""))}
            )
    return notes


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
        kinds.setdefault(reason_kind(note["reason"]), []).append(note)
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
            f"  e.g. {alerts.quoted(example['source_key'])}: {alerts.quoted(example['reason'])}",
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
    notes = read_quarantine_notes(s3, config.bucket, quarantined_reason_keys(s3, config, start, end))
    return quarantine_report(summary, notes, run_url)


def write_ledger(
    s3, bucket: str, prefix: str, objects: dict[str, bytes], first: datetime, last: datetime, merge=None
) -> dict:
    """Write each ledger object unless the stored one is identical, ``publishing`` or ``notified``; return
    the counts. ``merge(stored bytes, new bytes, key) -> bytes`` instead decides what an object that is there
    becomes (the other pairs' objects: each pair's claimed entry is kept, the others replaced).

    One listing per day partition gives each stored entry's ETag: an entry whose ETag is the MD5 of the
    new bytes is identical and left alone (with SSE-KMS, ETags are no MD5 and every stored entry is read
    instead). Writes are conditional (If-None-Match for a new key, If-Match on the ETag just read), so an
    entry claimed or notified by a live run in the meantime is re-read and kept, never overwritten.
    """
    days = [f"{prefix}{day}" for day in layout.day_partitions(first, last)] if objects else []
    stored = list_with_etags(s3, bucket, days)

    def settle(key: str) -> str:
        new = objects[key]
        if stored.get(key) == store.md5(new):
            return "unchanged"

        def change(existing: bytes | None) -> bytes | None:
            if existing is None:
                return new
            if merge:
                return merge(existing, new, key)
            return None if _decision(existing) in CLAIMED else new

        held, wrote = store.update(s3, bucket, key, change, store.NDJSON if merge else store.JSON, key in stored)
        if wrote or held == new or merge:
            return "written" if wrote else "unchanged"
        return f"kept_{_decision(held)}"

    counts = Counter(store.in_parallel(s3, settle, sorted(objects)))
    return {name: counts.get(name, 0) for name in ("written", "unchanged", "kept_notified", "kept_publishing")}


def _decision(body: bytes) -> str | None:
    try:
        return json.loads(body).get("decision")
    except (ValueError, AttributeError):
        return None


def write_parquet(s3, bucket: str, prefix: str, bodies: dict[str, bytes], month_keys: list[str]) -> list[dict]:
    """Rewrite the Parquet object of each month from all its canonical CSVs; skip identical bytes."""
    by_month: dict[tuple[int, int], list[dict]] = {}
    for key in month_keys:
        slot = layout.slot_of_key(key)
        rows = by_month.setdefault((slot.year, slot.month), [])
        if key in bodies:
            rows.extend(canonical_rows(bodies[key]))
    return write_months(s3, bucket, prefix, by_month)


def write_months(s3, bucket: str, prefix: str, by_month: dict[tuple[int, int], list[dict]], pair: str = "") -> list:
    """Write each month's Parquet object of its rows unless identical bytes are there. ``pair``: another
    pair than the default one, under ``pair=<BASE>_<QUOTE>/``."""
    stored = list_with_etags(s3, bucket, [layout.parquet_key(y, m, prefix, pair) for y, m in by_month])
    out = []
    for (year, month), rows in sorted(by_month.items()):
        key, body = layout.parquet_key(year, month, prefix, pair), parquet_bytes(rows)
        changed = stored.get(key) != store.md5(body)
        if changed:
            store.write_bytes(s3, bucket, key, body, "application/vnd.apache.parquet")
        out.append({"key": key, "rows": len(rows), "bytes": len(body), "written": changed})
    return out


# ------------------------------------------------------------------------------ the task


def publish_due(
    s3,
    config: Config,
    analysed: list[Window],
    rule: rules.Rule,
    publish: Callable[[dict], str],
    run_url: str,
    claimant: str = "",
) -> dict:
    """Claim and publish each window due for subscribers (``notify_on_backfill``), once.

    A window is claimed (``publishing`` by ``claimant``, a conditional write over the entry just read)
    before it is published, and recorded as notified over its claim right after: a window notified or
    claimed by another run, or claimed by a live run between our read and our write, is left to it (and
    logged). ``publish(alert)`` sends one alert (``subject``, ``message``, ``attributes``) and returns its
    message id.
    Returns ``{"sent", "claimed_elsewhere", "claims_left"}``: the last lists windows this run claimed in
    an earlier try and never recorded (they may have been sent: never again, ops decide).
    """
    sent, elsewhere, left = 0, 0, []
    for window in analysed:
        if window.decision != NOTIFY:
            continue
        stamp = layout.iso(window.slot)
        stored, etag = windows.read_entry(s3, config, window.slot)
        if stored and stored["decision"] in CLAIMED:
            if stored["decision"] == PUBLISHING and stored.get("claimed_by") == claimant:
                left.append(stamp)
            elif stored["decision"] == NOTIFIED:
                log.info("Window %s was already notified (message %s): not again", stamp, stored["sns_message_id"])
            else:
                elsewhere += 1
                log.warning("Window %s is claimed by %s: this run does not publish it", stamp, stored.get("claimed_by"))
            continue
        entry = window.entry(rule)
        try:
            windows.claim(s3, config, entry, etag, claimant, started=True)
        except store.ConditionFailed:
            elsewhere += 1
            log.warning("Window %s was claimed by another run between our read and our claim: not publishing", stamp)
            continue
        message_id = publish(alerts.default_alert(entry, config.pair, rule.name, run_url))
        windows.record_notified(s3, config, entry, message_id, claimant)
        sent += 1
    return {"sent": sent, "claimed_elsewhere": elsewhere, "claims_left": left}


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
    """Analyse every window of ``[start, end)`` from the canonical CSVs, write the ledger and the
    monthly Parquet, claim and publish due breaches when allowed; return the summary (also logged). The
    rules are the run's (``rules.with_overrides``: its params override the default pair's rule).

    Raises NoUsableWindow when no window of the range has a record (all missing or quarantined), and
    ClaimsLeft (after everything else is written) when an earlier try of this run left claims."""
    if end <= start:
        raise ValueError(f"end {layout.iso(end)} is not after start {layout.iso(start)}")
    clock, rule = _Phases(), rule_set.default_rule
    needed, month_keys = canonical_keys(s3, config, start, end, rule)
    range_key = layout.range_objects_key(start, end, config.analysis_prefix)
    bodies, from_range = read_canonical(s3, config.bucket, sorted(set(needed) | set(month_keys)), range_key)
    clock.done("read_csv")
    prices = [parse_canonical_csv(bodies[key]) for key in needed if key in bodies]
    analysed = analyse_series(prices, start, end, rule, notify_on_backfill, now, config.max_alert_age_minutes)
    objects = ledger_objects(analysed, rule, config.changes_prefix)
    reason_keys = quarantined_reason_keys(s3, config, start, end)
    summary = summarize(analysed, start, end, len(reason_keys))
    summary["objects"] = objects_seen(reason_keys, (w.latest for w in analysed), config.quarantine_prefix)
    summary["canonical_csvs"] = {"from_range_object": from_range, "read": len(bodies) - from_range}
    if not analysed:
        raise NoUsableWindow(
            f"no usable window from {summary['start']} to {summary['end']}: {summary['windows']} windows, "
            f"{summary['missing']} without a canonical record, {summary['quarantined']} quarantined objects"
        )
    clock.done("analyse")
    summary["ledger"] = write_ledger(s3, config.bucket, config.changes_prefix, objects, start, end - layout.SLOT) | {
        "due": sum(1 for w in analysed if w.decision == NOTIFY)
    }
    clock.done("write_ledger")
    summary["parquet"] = write_parquet(s3, config.bucket, parquet_prefix, bodies, month_keys)
    clock.done("write_parquet")
    published = publish_due(s3, config, analysed, rule, publish, run_url, claimant) if publish else {}
    summary["notified"] = published.get("sent", 0)
    summary["claimed_elsewhere"] = published.get("claimed_elsewhere", 0)
    clock.done("publish")
    if len(rule_set.pairs) > 1:
        summary["pairs"] = backfill_pairs(
            s3, config, rule_set, start, end, range_key, parquet_prefix, publish, run_url, claimant
        )
        clock.done("pairs")
    summary["seconds"] = clock.seconds
    log_summary(summary)
    left = published.get("claims_left", []) + summary.get("pairs", {}).get("published", {}).get("left", [])
    if left:
        raise ClaimsLeft(
            f"claims left by an earlier try of {claimant} (may have been sent, not sent again): "
            + ", ".join(left)
            + "; to release a claim see README"
        )
    refused = summary.get("pairs", {}).get("published", {}).get("failed", [])
    if refused:  # not sent: the task's retry analyses the range again and publishes them
        raise RuntimeError("; ".join(refused))
    return summary


def backfill_pairs(
    s3, config: Config, rule_set, start: datetime, end: datetime, range_key: str,
    parquet_prefix: str = layout.PARQUET_PREFIX, publish: Callable[[dict], str] | None = None, run_url: str = "",
    claimant: str = "",
) -> dict:  # fmt: skip
    """The other pairs of the rules file over ``[start, end)``: each window's entry with every rule's
    decision (as a native backfill run of price_notification writes it), one ledger pass for all pairs
    (never over a ``publishing`` or ``notified`` entry) and each pair's monthly Parquet. With ``publish``
    (``notify_on_backfill``), firing rules are claimed by ``claimant`` in that pass and each is published
    once as the live DAG publishes them (``pairs.publish_alerts``); without, they are recorded
    ``suppressed_backfill``."""
    from include.price_pipeline import pairs

    others = pairs.other_pairs(rule_set)
    history = max(rule.history for pair in others for rule in rule_set.pairs[pair])
    month_keys = [key for key in all_month_keys(s3, config, start, end) if layout.is_pairs_key(key)]
    first = layout.pairs_analysis_key(start - history, config.analysis_prefix)
    last = layout.pairs_analysis_key(start - layout.SLOT, config.analysis_prefix)
    before = []
    for day in layout.day_partitions(start - history, start - layout.SLOT):
        keys = store.list_keys(s3, config.bucket, f"{config.analysis_prefix}{day}")
        before += [k for k in keys if layout.is_pairs_key(k) and first <= k <= last]
    bodies, _ = read_canonical(s3, config.bucket, sorted(set(month_keys) | set(before)), range_key)
    by_slot = store.prices_by_slot({layout.slot_of_key(key): body for key, body in bodies.items()})
    entries: dict[datetime, dict[str, dict]] = {}
    out = {}
    for pair in others:
        series = rules.Series([by_slot[slot][pair] for slot in sorted(by_slot) if pair in by_slot[slot]])
        windows_done = 0
        for price in series.prices:
            if not start <= price.slot < end:
                continue
            decided = {rule.name: rules.evaluate(rule, series, price.slot) for rule in rule_set.pairs[pair]}
            entry = pairs.pair_entry(pair, price.slot, price, rule_set.pairs[pair], decided, publish is not None,
                                     "backfill run (notify_on_backfill is off)")  # fmt: skip
            claimed = entry["decision"] == PUBLISHING
            entries.setdefault(price.slot, {})[pair] = {**entry, "claimed_by": claimant} if claimed else entry
            windows_done += 1
        out[pair] = {"windows": windows_done}
    by_pair_month: dict[str, dict[tuple[int, int], list[dict]]] = {pair: {} for pair in others}
    for key in month_keys:
        slot = layout.slot_of_key(key)
        for pair in others:
            by_pair_month[pair].setdefault((slot.year, slot.month), [])
        for row in canonical_rows(bodies.get(key, b"")):
            if row["pair"] in by_pair_month:
                by_pair_month[row["pair"]][(slot.year, slot.month)].append(row)
    for pair in others:
        out[pair]["parquet"] = write_months(s3, config.bucket, parquet_prefix, by_pair_month[pair], pair)
    objects = {
        layout.pairs_ledger_key(slot, config.changes_prefix): pairs.entries_bytes(by_pair)
        for slot, by_pair in entries.items()
    }
    ledger_range = (start, end - layout.SLOT)
    out["ledger"] = write_ledger(s3, config.bucket, config.changes_prefix, objects, *ledger_range, pairs.merged_bytes)
    if publish is not None:
        out["published"] = {"sent": 0, "skipped": [], "left": [], "failed": []}
        for slot, by_pair in sorted(entries.items()):
            due = [alert for entry in by_pair.values() for alert in pairs.due_alerts(entry, config, run_url)]
            result = pairs.publish_alerts(s3, config, slot, due, claimant, publish) if due else {}
            out["published"]["sent"] += len(result.get("sent", {}))
            for outcome in ("skipped", "left", "failed"):
                out["published"][outcome] += result.get(outcome, [])
        for reason in out["published"]["skipped"]:
            log.warning("%s", reason)
    return out


class _Phases:
    """Wall-clock seconds of each phase, for the log and XCom only (never in an S3 object)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def done(self, phase: str) -> None:
        now = time.monotonic()
        self.seconds[phase] = round(now - self._last, 3)
        self._last = now


def log_summary(summary: dict) -> None:
    """A few readable lines for the task log."""
    log.info(
        "Range %s to %s: %d windows, %d seen, %d missing (%d quarantined objects), %d breaches",
        summary["start"],
        summary["end"],
        summary["windows"],
        summary["windows_seen"],
        summary["missing"],
        summary["quarantined"],
        summary["breaches"],
    )
    log.info("Decisions: %s; ledger: %s", summary["decisions"], summary["ledger"])
    if summary.get("canonical_csvs"):
        log.info("Canonical CSVs: %s", summary["canonical_csvs"])
    if summary["missing_windows"]:
        log.info("First missing windows: %s", ", ".join(summary["missing_windows"]))
    for move in summary["largest_moves"]:
        log.info("Largest move: %s %+.4f%% (%s)", move["window_start"], move["change_pct"], move["decision"])
    for item in summary.get("parquet", []):
        log.info(
            "Parquet %s: %d rows, %d bytes, %s",
            item["key"],
            item["rows"],
            item["bytes"],
            "written" if item["written"] else "unchanged",
        )
    if summary.get("notified"):
        log.info("Notified subscribers of %d windows", summary["notified"])
    if summary.get("claimed_elsewhere"):
        log.warning("%d due windows were claimed by other runs: not published here", summary["claimed_elsewhere"])
    if summary.get("seconds"):
        log.info("Seconds per phase: %s", summary["seconds"])

"""Bulk price history: the ``price_history_backfill`` DAG's analysis of a range its one Glue run normalized,
every pair's windows in one pass, by the live lane's own decision (``ledger.decide``), so each ledger object
is byte-identical to what ``price_notification`` writes (README "Backfill"). No Airflow here.
"""

from __future__ import annotations

import bisect
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from include.price_pipeline import alerts, layout, ledger, parquet, rules, store
from include.price_pipeline.analysis import FIRED, Price, due_for_subscribers
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


def summarize(entries: dict[datetime, dict[str, dict]], start: datetime, end: datetime, quarantined: int,
              pairs: Iterable[str] = ()) -> dict:  # fmt: skip
    """Counts for the task log and XCom: windows seen (any pair's) and missing, quarantined objects, breaches
    (sent or not), each rule decision, the largest moves of change rules, and per pair (each of ``pairs``, and
    any decided) its windows with a usable record and decisions."""
    missing = [slot for slot in layout.slots_between(start, end) if slot not in entries]
    decided = [(slot, entry, name, rule) for slot, by_pair in sorted(entries.items())
               for entry in by_pair.values() for name, rule in entry["rules"].items()]  # fmt: skip
    moved = sorted(
        ((slot, e, n, r) for slot, e, n, r in decided if r["kind"] == rules.CHANGE and r["change_pct"] is not None),
        key=lambda item: (-abs(item[3]["change_pct"]), item[0], item[1]["pair"], item[2]),
    )
    by_pair: dict[str, Counter] = {pair: Counter() for pair in pairs}
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
    """(``{key: bytes}`` of the listed canonical CSVs ``keys``, how many came from the range object): the Glue
    run's range object gives the keys it wrote (one GET instead of thousands), S3 the others."""
    written = range_objects(s3, bucket, range_key)
    known = {key: written[key] for key in keys if key in written}
    rest = [key for key in keys if key not in known]
    read = {key: body for key, body in zip(rest, store.read_many(s3, bucket, rest), strict=True) if body is not None}
    return known | read, len(known)


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


def write_ledger(s3, bucket: str, prefix: str, objects: dict[str, bytes], first: datetime, last: datetime) -> dict:
    """Write each window's ledger object unless the stored one holds the same (``ledger.merged`` keeps each
    pair's ``publishing`` or ``notified`` entry); return the counts. A stored object whose listed ETag is the
    new bytes' MD5 is left alone (with SSE-KMS ETags are no MD5: each is read); writes are conditional."""
    days = [f"{prefix}{day}" for day in layout.day_partitions(first, last)] if objects else []
    stored = store.list_with_etags(s3, bucket, days)

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
    """Analyse every pair's windows of ``[start, end)``, write the ledger and the monthly Parquet, claim and
    publish due rules when ``publish``; return the summary (also logged). NoUsableWindow when no window has a
    record; alerts.ClaimsLeft (after everything else is written) when an earlier try of this run left claims."""
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
            entries.setdefault(price.slot, {})[pair] = ledger.decide(pair, pair_rules, series, price.slot, due,
                                                                     why_not_due, claimant)  # fmt: skip
    reason_keys = store.quarantine_reason_keys(s3, config.bucket, config.quarantine_prefix, start, end)
    summary = summarize(entries, start, end, len(reason_keys), rule_set.pairs)
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
    summary["parquet"] = parquet.write_parquet(s3, config.bucket, parquet_prefix, readable, month_keys, rule_set)
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

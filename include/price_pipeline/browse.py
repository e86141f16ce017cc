"""What the "Price alerts" page shows for a range of windows, read from S3 (no Airflow here).

Plain functions over a boto3 S3 client (the plugin passes ``S3Hook(aws_conn_id).get_conn()``). Two ways
to read a range, chosen by its length:

- **ledger** (up to :data:`LEDGER_MAX_WINDOWS` windows): every ledger entry of the range, as written.
- **parquet** (longer ranges): prices from the monthly Parquet objects, each window decided by the default
  pair's rule before its cooldown (``rules.Series.raw``); a window without a previous record or under the
  threshold is shown as decided from its price (``source = "parquet"``). The windows whose ledger entry says
  more than the price can (a change above the threshold: sent or not, the SNS message id; no price in the Parquet)
  come back as ``pending``, and :func:`ledger_details` reads their entries in a second request, so the
  page draws the chart of a month before those reads (one GET each) are done.

Entries are read tolerantly: an unknown decision is shown as it is, a missing field is blank (None).
Every slot of the range is a row; a window with neither a price nor a ledger entry is ``missing``, or
``quarantined`` (with the reason) when its raw object was quarantined.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import UTC, datetime, timedelta

from include.price_pipeline import layout, rules, store
from include.price_pipeline.analysis import (
    BELOW_THRESHOLD,
    NO_PREVIOUS,
    NOTIFIED,
    NOTIFY,
    PUBLISHING,
    SUPPRESSED_BACKFILL,
    SUPPRESSED_COOLDOWN,
    Price,
)
from include.price_pipeline.settings import Config

#: Longest range the page reads (31 days of 5-minute windows).
MAX_RANGE = timedelta(days=31)
#: Ranges of at most this many windows are read from the ledger alone (one GET per window).
LEDGER_MAX_WINDOWS = 288
#: Row of a slot that has neither a price nor a ledger entry.
MISSING = "missing"
DAMAGED = "damaged_ledger"  # the window's pairs' ledger object is damaged: its run fails, the row says why
#: Row of a window with a price (Parquet) but no ledger entry (its run has not decided it).
NO_ENTRY = "no_ledger_entry"
#: Row of a window without a record whose raw object was quarantined.
QUARANTINED = "quarantined"
#: Row whose ledger entry :func:`ledger_details` reads (long ranges).
PENDING = "pending"
#: Ledger entry fields a row carries, beside the window start.
ROW_FIELDS = ("price", "change_pct", "threshold_pct", "direction", "decision", "reason", "sns_message_id")


def parse_range(start: str | None, end: str | None, now: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` on slot boundaries from ISO 8601 texts; default the last 24 hours before ``now``.

    Raises ValueError for an empty, reversed or longer than :data:`MAX_RANGE` range.
    """
    end_at = _slot_ceiling(_parse_time(end)) if end else _slot_ceiling(now)
    start_at = layout.slot_start(_parse_time(start)) if start else end_at - timedelta(days=1)
    if start_at >= end_at:
        raise ValueError("start must be before end")
    if end_at - start_at > MAX_RANGE:
        raise ValueError(f"the range is longer than {MAX_RANGE.days} days")
    return start_at, end_at


#: The moments a range may name: slot and day arithmetic (a day before, a slot after) stays within
#: datetime's years 1 to 9999 and Unix time.
EARLIEST = datetime(1970, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    if not EARLIEST <= moment <= LATEST:
        raise ValueError(
            f"{text.strip()[:40]!r} is outside the dates the page shows ({EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d})"
        )
    return moment.astimezone(UTC)


def _slot_ceiling(moment: datetime) -> datetime:
    floor = layout.slot_start(moment)
    return floor if floor == moment else floor + layout.SLOT


def history(s3, config: Config, rule: rules.Rule, start: datetime, end: datetime, pair: str = "") -> dict:
    """Every window of ``[start, end)``, counts by decision, and the quarantined objects of the range;
    ``rule``: the default pair's (its threshold, and the decisions of a long range's quiet windows).

    ``pair``: another pair than the default one (its ledger entries, a day at most: ValueError beyond);
    each row shows the rule that decided most (notified, then claimed, suppressed, ...) and its reason."""
    slots = layout.slots_between(start, end)
    if pair and pair != config.pair:
        if len(slots) > LEDGER_MAX_WINDOWS:
            raise ValueError(f"pairs other than {config.pair} are shown a day at a time")
        rows = _mark_quarantined(_pair_rows(s3, config, slots, pair), bad := quarantined(s3, config, start, end))
        return {
            "start": layout.iso(start),
            "end": layout.iso(end),
            "mode": "ledger",
            "pair": pair,
            "threshold_pct": None,
            "windows": rows,
            "counts": dict(sorted(Counter(row["decision"] for row in rows).items())),
            "quarantined": [item for item in bad if f"/{layout.pair_slug(pair)}" in (item["source_key"] or "")],
        }
    if len(slots) <= LEDGER_MAX_WINDOWS:
        mode, rows = "ledger", _rows_from_ledger(s3, config, slots)
    else:
        mode, rows = "parquet", _rows_from_parquet(s3, config, rule, slots)
    bad = quarantined(s3, config, start, end)
    rows = _mark_quarantined(rows, bad)
    return {
        "start": layout.iso(start),
        "end": layout.iso(end),
        "mode": mode,
        "threshold_pct": rule.threshold_pct,
        "windows": rows,
        "counts": dict(sorted(Counter(row["decision"] for row in rows).items())),
        "quarantined": bad,
    }


def _mark_quarantined(rows: list[dict], bad: list[dict]) -> list[dict]:
    """A window without a record whose object was quarantined shows as ``quarantined``, with its reason."""
    reason = {}
    for item in bad:
        reason.setdefault(item["window_start"], item["reason"])
    return [
        {**row, "decision": QUARANTINED, "reason": reason[row["window_start"]]}
        if row["decision"] == MISSING and row["window_start"] in reason
        else row
        for row in rows
    ]


def ledger_details(s3, config: Config, rule: rules.Rule, start: datetime, end: datetime) -> list[dict]:
    """The rows :func:`history` left ``pending`` for ``[start, end)``, from their ledger entries (``missing``
    where there is none)."""
    slots = layout.slots_between(start, end)
    if len(slots) <= LEDGER_MAX_WINDOWS:
        return []
    rows = _rows_from_parquet(s3, config, rule, slots)
    pending = {row["window_start"]: row for row in rows if row["decision"] == PENDING}
    key_of = {stamp: layout.ledger_key(_parse_time(stamp), config.changes_prefix) for stamp in pending}
    entries = _read_entries(s3, config, list(key_of.values()))
    out = []
    for stamp, key in key_of.items():
        if key in entries:
            out.append(row_from_entry(_parse_time(stamp), entries[key]))
        else:
            out.append({**pending[stamp], "decision": MISSING if pending[stamp]["price"] is None else NO_ENTRY})
    return (
        _mark_quarantined(out, quarantined(s3, config, start, end))
        if any(r["decision"] == MISSING for r in out)
        else out
    )


def row_from_entry(slot: datetime, entry: dict) -> dict:
    """A page row from a ledger entry, whatever fields it has (missing ones are None)."""
    latest = entry.get("latest") if isinstance(entry.get("latest"), dict) else {}
    row = {
        "window_start": layout.iso(slot),
        "price": latest.get("weighted_average"),
        "change_pct": entry.get("change_pct"),
        "threshold_pct": entry.get("threshold_pct"),
        "direction": entry.get("direction"),
        "decision": entry.get("decision"),
        "reason": entry.get("reason"),
        "sns_message_id": entry.get("sns_message_id"),
        "source": "ledger",
    }
    for name in ("price", "change_pct", "threshold_pct"):
        if not isinstance(row[name], int | float) or isinstance(row[name], bool):
            row[name] = None
    for name in ("direction", "decision", "reason", "sns_message_id"):
        row[name] = None if row[name] is None else str(row[name])
    row["decision"] = row["decision"] or "unknown"
    return row


def missing_row(slot: datetime) -> dict:
    return {"window_start": layout.iso(slot), **dict.fromkeys(ROW_FIELDS), "decision": MISSING, "source": None}


def _ledger_keys(s3, config: Config, slots: list[datetime]) -> set[str]:
    """Ledger keys that exist for ``slots`` (one listing per day partition, in parallel)."""
    prefixes = [f"{config.changes_prefix}{day}" for day in layout.day_partitions(slots[0], slots[-1])]
    listed = store.in_parallel(s3, lambda prefix: store.list_keys(s3, config.bucket, prefix), prefixes)
    return {key for keys in listed for key in keys}


def _read_entries(s3, config: Config, keys: list[str], pair: str = "") -> dict[str, dict]:
    """``{key: entry}`` of ledger objects (a body that is not a JSON object is left out); ``pair``: of the
    other pairs' objects, that pair's entry as the pipeline reads it (``pairs.parse_entries``; a damaged
    object is a row saying so)."""
    from include.price_pipeline import pairs

    def read(key: str) -> dict | None:
        body = store.read_bytes(s3, config.bucket, key)
        if pair and body is not None:
            try:
                return pairs.parse_entries(body, key).get(pair)
            except pairs.DamagedLedger as damage:
                return {"decision": DAMAGED, "reason": str(damage)}
        try:
            entry = json.loads(body) if body is not None else None
        except ValueError:
            return None
        return entry if isinstance(entry, dict) else None

    entries = store.in_parallel(s3, read, keys)
    return {key: entry for key, entry in zip(keys, entries, strict=True) if entry is not None}


#: A rule's decisions that are a firing, sent or not: the page marks them, one marker per rule.
FIRED = (NOTIFY, PUBLISHING, NOTIFIED, SUPPRESSED_BACKFILL, SUPPRESSED_COOLDOWN)
#: Which rule's decision a pair's row shows: the first of these any rule has, else the first rule's.
RULE_PRECEDENCE = (
    "notified",
    "publishing",
    "notify",
    "suppressed_backfill",
    "suppressed_cooldown",
    "below_min_abs_move",
)


def row_from_pair_entry(slot: datetime, entry: dict) -> dict:
    """A page row from another pair's entry: the window's price and the deciding rule's change and reason."""
    if entry.get("decision") == DAMAGED:
        return row_from_entry(slot, entry)
    decided = entry.get("rules") if isinstance(entry.get("rules"), dict) else {}
    states = [(name, rule) for name, rule in decided.items() if isinstance(rule, dict)]
    rank = {decision: index for index, decision in enumerate(RULE_PRECEDENCE)}
    name, rule = min(states, key=lambda s: rank.get(s[1].get("decision"), len(rank)), default=("", {}))
    flat = {**rule, "latest": entry.get("latest"), "reason": f"{name}: {rule.get('reason')}" if name else None}
    fired = [{"rule": n, "direction": r.get("direction"), "decision": r.get("decision")}
             for n, r in states if r.get("decision") in FIRED]  # fmt: skip
    return row_from_entry(slot, flat) | {"fired": fired}


def _pair_rows(s3, config: Config, slots: list[datetime], pair: str) -> list[dict]:
    existing = _ledger_keys(s3, config, slots)
    key_of = {slot: layout.pairs_ledger_key(slot, config.changes_prefix) for slot in slots}
    entries = _read_entries(s3, config, [key for key in key_of.values() if key in existing], pair)
    return [
        row_from_pair_entry(slot, entries[key_of[slot]]) if key_of[slot] in entries else missing_row(slot)
        for slot in slots
    ]


def _rows_from_ledger(s3, config: Config, slots: list[datetime]) -> list[dict]:
    existing = _ledger_keys(s3, config, slots)
    key_of = {slot: layout.ledger_key(slot, config.changes_prefix) for slot in slots}
    entries = _read_entries(s3, config, [key for key in key_of.values() if key in existing])
    return [
        row_from_entry(slot, entries[key_of[slot]]) if key_of[slot] in entries else missing_row(slot) for slot in slots
    ]


def parquet_prices(s3, config: Config, first: datetime, last: datetime) -> list[Price]:
    """Prices of slots in ``[first, last]`` from the monthly Parquet objects (months without one: none)."""
    import pyarrow.parquet as pq

    months = layout.months_between(first, last)
    keys = [layout.parquet_key(year, month) for year, month in months]
    prices = {}
    for body in store.read_many(s3, config.bucket, keys):
        if body is None:
            continue
        table = pq.read_table(io.BytesIO(body), columns=["timestamp", "weighted_average", "pair", "source_key"])
        for stamp, price, pair, source_key in zip(*(table.column(i).to_pylist() for i in range(4)), strict=True):
            slot = stamp.astimezone(UTC)
            if first <= slot <= last and price is not None:
                prices[slot] = Price(slot, price, pair, source_key)
    return [prices[slot] for slot in sorted(prices)]


def _rows_from_parquet(s3, config: Config, rule: rules.Rule, slots: list[datetime]) -> list[dict]:
    """Rows of the prices in the Parquet; ``pending`` (its ledger entry tells: ``ledger_details``) unless the
    rule decides the window from its price alone (no previous record, or under the threshold)."""
    look_back = rule.reference_offset + timedelta(minutes=rule.tolerance_minutes)
    series = rules.Series(parquet_prices(s3, config, slots[0] - look_back, slots[-1]))
    rows = []
    for slot in slots:
        if series.at(slot) is None:
            rows.append({**missing_row(slot), "decision": PENDING})
            continue
        decided = series.raw(rule, slot)
        quiet = decided.decision in (NO_PREVIOUS, BELOW_THRESHOLD)
        rows.append({
            "window_start": layout.iso(slot),
            "price": series.at(slot).weighted_average,
            "change_pct": decided.change_pct,
            "threshold_pct": rule.threshold_pct,
            "direction": decided.direction,
            "decision": decided.decision if quiet else PENDING,
            "reason": None,
            "sns_message_id": None,
            "source": "parquet",
        })  # fmt: skip
    return rows


def quarantined(s3, config: Config, start: datetime, end: datetime) -> list[dict]:
    """Every quarantined object of windows in ``[start, end)``: its key, reason and source key."""
    # One listing per month: quarantined objects are few, and a month is one request instead of 31.
    months = [
        f"{config.quarantine_prefix}{layout.month_partition(year, month)}"
        for year, month in layout.months_between(start, end - layout.SLOT)
    ]
    listed = store.in_parallel(s3, lambda prefix: store.list_keys(s3, config.bucket, prefix), months)
    keys = [key for keys in listed for key in keys]
    in_range = [key for key in keys if _has_slot(key) and start <= layout.slot_of_key(key) < end]
    reasons = _read_entries(s3, config, [key for key in in_range if key.endswith(".reason.json")])
    out = []
    for key in in_range:
        if not key.endswith(".object"):
            continue
        reason_key = key[: -len(".object")] + ".reason.json"
        note = reasons.get(reason_key, {})
        out.append(
            {
                "window_start": layout.iso(layout.slot_of_key(key)),
                "key": key,
                "reason_key": reason_key if reason_key in reasons else None,
                "reason": _text(note.get("reason")),
                "source_key": _text(note.get("source_key")),
                "format_guess": _text(note.get("format_guess")),
            }
        )
    return out


def _has_slot(key: str) -> bool:
    try:
        layout.slot_of_key(key)
    except ValueError:
        return False
    return True


def _text(value) -> str | None:
    return None if value is None else str(value)

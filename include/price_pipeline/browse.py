"""What the "Price alerts" page shows of one pair for a range of windows, read from S3 (no Airflow here;
README "Price alerts page"): up to :data:`LEDGER_MAX_WINDOWS` windows from the ledger, longer from the monthly
Parquet, with ``pending`` rows :func:`ledger_details` fills in. Every slot is a row (:func:`row_from_entry`);
over more than :data:`LIST_ALL_MAX_WINDOWS` the quiet ones are drawn (:func:`envelope`) and counted, not listed.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from include.price_pipeline import layout, parquet, quarantine, rules, store
from include.price_pipeline.analysis import BELOW_THRESHOLD, FIRED, NO_PREVIOUS, NOT_CROSSED, Price
from include.price_pipeline.settings import Config

#: Longest range the page reads (a year of 5-minute windows, a leap year's included).
MAX_RANGE = timedelta(days=366)
#: Ranges of at most this many windows are read from the ledger alone (one GET per window).
LEDGER_MAX_WINDOWS = 288
#: Ranges of at most this many windows (31 days) list every window; longer ones list those that are not
#: :data:`QUIET` (a year's 105,120 rows are 20 MB of JSON the table would page through 200 at a time).
LIST_ALL_MAX_WINDOWS = 31 * 288
#: Most rows a long range lists (the newest; the rest are counted): a bounded answer whatever the range.
MAX_LISTED = 20_000
#: Steps of a long range's chart: one per pixel column of the page's chart.
ENVELOPE_STEPS = 1_200
#: Row of a slot that has neither a price nor a ledger entry.
MISSING = "missing"
DAMAGED = "damaged_ledger"  # the window's pairs' ledger object is damaged: its run fails, the row says why
#: Row of a window with a price (Parquet) but no ledger entry (its run has not decided it).
NO_ENTRY = "no_ledger_entry"
#: Row of a window without a record whose raw object was quarantined.
QUARANTINED = "quarantined"
#: Row whose ledger entry :func:`ledger_details` reads (long ranges).
PENDING = "pending"
#: Decisions a window gets from its price alone (nothing fired, nothing missing).
QUIET = (NO_PREVIOUS, BELOW_THRESHOLD, NOT_CROSSED)
#: The fields of a quarantined object's reason file a row carries.
QUARANTINE_FIELDS = ("reason", "source_key", "format_guess")
#: Ledger entry fields a row carries, beside the window start.
ROW_FIELDS = ("price", "change_pct", "threshold_pct", "direction", "decision", "reason", "sns_message_id")


def parse_range(start: str | None, end: str | None, now: datetime) -> tuple[datetime, datetime]:
    """``[start, end)`` on slot boundaries from ISO 8601 texts (default: the last 24 hours before ``now``);
    ValueError for an empty, reversed or longer than :data:`MAX_RANGE` range."""
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


def history(s3, config: Config, rule_set: rules.Rules, start: datetime, end: datetime, pair: str = "") -> dict:
    """The windows of ``[start, end)`` of ``pair`` (default: the default pair): every one listed up to
    :data:`LIST_ALL_MAX_WINDOWS`, else those not quiet (``unlisted_counts`` counts the others, ``envelope``
    draws them); counts by decision of every window, and the pair's quarantined objects of the range."""
    pair = pair or rule_set.default_pair
    slots = layout.slots_between(start, end)
    if len(slots) <= LEDGER_MAX_WINDOWS:
        mode, rows = "ledger", _rows_from_ledger(s3, config, slots, pair)
    else:
        mode, rows = "parquet", _rows_from_parquet(s3, config, rule_set.pairs[pair], slots, pair)
    bad = quarantined(s3, config, rule_set, start, end, pair)
    rows = _mark_quarantined(rows, bad)
    listed = _listed(rows)
    # Not listed over a long range: the quiet windows, and those without a price (missing unless the ledger
    # has their entry: ledger_details then returns it).
    no_price = MISSING if listed is not rows else PENDING
    every = Counter(
        no_price if row["decision"] == PENDING and row["price"] is None else row["decision"] for row in rows
    )
    unlisted = every - Counter(row["decision"] for row in listed)
    return {
        "start": layout.iso(start),
        "end": layout.iso(end),
        "mode": mode,
        "pair": pair,
        "windows": listed,
        "counts": dict(sorted(every.items())),
        "unlisted_counts": dict(sorted(unlisted.items())),
        "envelope": envelope(rows) if len(listed) < len(rows) else None,
        "quarantined": bad,
    }


def _listed(rows: list[dict]) -> list[dict]:
    """The rows a range lists: all of a range of up to :data:`LIST_ALL_MAX_WINDOWS`, else the newest
    :data:`MAX_LISTED` of those with a price and a decision not :data:`QUIET` (a rule may have fired), in order."""
    if len(rows) <= LIST_ALL_MAX_WINDOWS:
        return rows
    return [row for row in rows if row["decision"] not in QUIET and row["price"] is not None][-MAX_LISTED:]


def envelope(rows: list[dict]) -> dict:
    """A long range's chart in :data:`ENVELOPE_STEPS` steps of ``step_seconds`` from its start: each step's
    lowest and highest price, and the lowest and highest change of its quiet windows (``None``: none); the
    listed windows are drawn from their rows."""
    per = -(-len(rows) // ENVELOPE_STEPS)
    price, change = [], []
    for first in range(0, len(rows), per):
        steps = rows[first : first + per]
        prices = [row["price"] for row in steps if row["price"] is not None]
        changes = [row["change_pct"] for row in steps if row["decision"] in QUIET and row["change_pct"] is not None]
        price.append([min(prices), max(prices)] if prices else None)
        change.append([min(changes), max(changes)] if changes else None)
    return {"step_seconds": int(per * layout.SLOT.total_seconds()), "price": price, "change": change}


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


def ledger_details(s3, config: Config, rule_set: rules.Rules, start: datetime, end: datetime, pair: str = "") -> list:
    """The rows :func:`history` left ``pending`` for ``[start, end)``, from their ledger entries (``missing``
    where there is none), in order; over a long range also the windows without a price that have an entry."""
    pair = pair or rule_set.default_pair
    slots = layout.slots_between(start, end)
    if len(slots) <= LEDGER_MAX_WINDOWS:
        return []
    rows = _rows_from_parquet(s3, config, rule_set.pairs[pair], slots, pair)
    listed = _listed(rows)
    unpriced = set() if listed is rows else {row["window_start"] for row in rows if row["price"] is None}
    wanted = unpriced | {row["window_start"] for row in listed}
    pending = {_parse_time(row["window_start"]): row for row in rows
               if row["decision"] == PENDING and row["window_start"] in wanted}  # fmt: skip
    entries = _read_entries(s3, config, list(pending), pair)
    out = [
        row_from_entry(slot, entries[slot])
        if slot in entries
        else {**row, "decision": MISSING if row["price"] is None else NO_ENTRY}
        for slot, row in pending.items()
        if slot in entries or row["window_start"] not in unpriced
    ]
    missing = any(r["decision"] == MISSING for r in out)
    return _mark_quarantined(out, quarantined(s3, config, rule_set, start, end, pair)) if missing else out


def row_from_entry(slot: datetime, entry: dict) -> dict:
    """A page row from a pair's ledger entry, whatever fields it has: the window's price, the deciding
    rule's change and reason (the first rule with a decision of RULE_PRECEDENCE, else the first rule), and
    ``fired``: each rule that fired, sent or not (one marker per rule)."""
    decided = entry.get("rules") if isinstance(entry.get("rules"), dict) else {}
    states = [(name, rule) for name, rule in decided.items() if isinstance(rule, dict)]
    rank = {decision: index for index, decision in enumerate(RULE_PRECEDENCE)}
    name, rule = min(states, key=lambda s: rank.get(s[1].get("decision"), len(rank)), default=("", entry))
    latest = entry.get("latest") if isinstance(entry.get("latest"), dict) else {}
    row = {
        "window_start": layout.iso(slot),
        "price": latest.get("weighted_average"),
        "change_pct": rule.get("change_pct"),
        "threshold_pct": rule.get("threshold_pct"),
        "direction": rule.get("direction"),
        "decision": rule.get("decision"),
        "reason": f"{name}: {rule['reason']}" if name and rule.get("reason") is not None else rule.get("reason"),
        "sns_message_id": rule.get("sns_message_id"),
        "source": "ledger",
        "fired": [
            {"rule": n, "direction": r.get("direction"), "decision": r.get("decision")}
            for n, r in states
            if r.get("decision") in FIRED
        ],  # fmt: skip
    }
    for field in ("price", "change_pct", "threshold_pct"):
        if not isinstance(row[field], int | float) or isinstance(row[field], bool):
            row[field] = None
    for field in ("direction", "decision", "reason", "sns_message_id"):
        row[field] = None if row[field] is None else str(row[field])
    row["decision"] = row["decision"] or "unknown"
    if isinstance(latest.get("basis"), str):  # an approximated price (analysis.APPROXIMATION) says so
        row["price_basis"] = latest["basis"]
    return row


def missing_row(slot: datetime) -> dict:
    return {"window_start": layout.iso(slot), **dict.fromkeys(ROW_FIELDS), "decision": MISSING, "source": None}


#: Which rule's decision a row shows: the first of these any rule has, else the first rule's.
RULE_PRECEDENCE = (
    "notified",
    "publishing",
    "notify",
    "suppressed_backfill",
    "suppressed_cooldown",
    "below_min_abs_move",
)


def _read_entries(s3, config: Config, slots: list[datetime], pair: str) -> dict[datetime, dict]:
    """``{slot: pair's entry}`` of the windows' ledger objects that exist (one listing per day partition,
    then one GET each), read as the pipeline reads them (``ledger.parse_entries``): a damaged object is an
    entry saying so."""
    from include.price_pipeline import ledger

    if not slots:
        return {}
    prefixes = [f"{config.changes_prefix}{day}" for day in layout.day_partitions(min(slots), max(slots))]
    listed = {key for keys in store.in_parallel(s3, lambda p: store.list_keys(s3, config.bucket, p), prefixes)
              for key in keys}  # fmt: skip
    key_of = {slot: layout.pairs_ledger_key(slot, config.changes_prefix) for slot in slots}
    there = [slot for slot in slots if key_of[slot] in listed]

    def read(slot: datetime) -> dict | None:
        body = store.read_bytes(s3, config.bucket, key_of[slot])
        try:
            return None if body is None else ledger.parse_entries(body, key_of[slot]).get(pair)
        except ledger.DamagedLedger as damage:
            return {"decision": DAMAGED, "reason": str(damage)}

    entries = store.in_parallel(s3, read, there)
    return {slot: entry for slot, entry in zip(there, entries, strict=True) if entry is not None}


def _rows_from_ledger(s3, config: Config, slots: list[datetime], pair: str) -> list[dict]:
    entries = _read_entries(s3, config, slots, pair)
    return [row_from_entry(slot, entries[slot]) if slot in entries else missing_row(slot) for slot in slots]


def parquet_prices(s3, config: Config, first: datetime, last: datetime, pair: str) -> list[Price]:
    """``pair``'s prices of slots in ``[first, last]`` from its monthly Parquet objects (months without one:
    none)."""
    keys = [layout.parquet_key(year, month, pair) for year, month in layout.months_between(first, last)]
    columns = ["timestamp", "weighted_average", "pair", "source_key"]
    prices = {}
    for body in store.read_many(s3, config.bucket, keys):
        found = parquet.read_columns(body, columns)  # a year is 105,120 rows: no dict per row
        for slot, price, name, key in zip(*(found[column] for column in columns), strict=True):
            if first <= slot <= last and price is not None:
                prices[slot] = Price(slot, price, name, key)
    return [prices[slot] for slot in sorted(prices)]


def _rows_from_parquet(s3, config: Config, pair_rules, slots: list[datetime], pair: str) -> list[dict]:
    """Rows of the pair's prices in the Parquet, as its first rule sees them; ``pending`` (``ledger_details``)
    unless every rule decides the window from its price alone (no previous record, under threshold, not crossed)."""
    rule = pair_rules[0]
    look_back = max(r.reference_offset + r.tolerance for r in pair_rules)
    series = rules.Series(parquet_prices(s3, config, slots[0] - look_back, slots[-1], pair))
    rows = []
    for slot in slots:
        if series.at(slot) is None:
            rows.append({**missing_row(slot), "decision": PENDING})
            continue
        decided = series.raw(rule, slot)
        quiet = all(series.raw(r, slot).decision in QUIET for r in pair_rules)
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


def quarantined(s3, config: Config, rule_set: rules.Rules, start: datetime, end: datetime, pair: str) -> list[dict]:
    """Every quarantined object of ``pair``'s windows in ``[start, end)`` (``quarantine.notes``): its key,
    reason and source key."""
    return [
        {
            "window_start": layout.iso(layout.slot_of_key(note["key"])),
            "key": note["key"][: -len(".reason.json")] + ".object",
            "reason_key": note["key"],
            **{field: None if note.get(field) is None else str(note[field]) for field in QUARANTINE_FIELDS},
        }
        for note in quarantine.notes(s3, config, rule_set, start, end)
        if note["pair"] == pair
    ]


def incidents(s3, config: Config) -> dict:
    """The page's ops incidents: those open (oldest first) and the last closed (newest first), each its kind,
    subject, first and last failing window, windows counted and, once closed, the window that resolved it."""
    from include.price_pipeline import incidents as ops

    shown = ("kind", "subject", "first", "last", "windows", "resolved")
    state = ops.read(s3, config.bucket, config.changes_prefix)
    opened = sorted(state["open"].values(), key=lambda incident: (incident["first"], incident["subject"]))
    return {
        "open": [{name: incident.get(name) for name in shown} for incident in opened],
        "closed": [{name: incident.get(name) for name in shown} for incident in state["closed"]],
    }

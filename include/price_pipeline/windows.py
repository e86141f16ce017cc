"""Task bodies of the price-notification DAG as plain functions (S3 through a boto3 client)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from include.price_pipeline import alerts, layout, store
from include.price_pipeline.analysis import (
    NOTIFIED,
    NOTIFY,
    Policy,
    apply_freshness,
    classify,
    series_changes,
)
from include.price_pipeline.settings import Config

log = logging.getLogger(__name__)


class WindowFailed(Exception):
    """The window cannot be analysed and a retry will not change that (the message says why)."""


class WindowNotReady(Exception):
    """An earlier window this one is compared with has a raw record whose normalization is still
    under way (a parallel backfill, a slow or retried Glue run): analysing now would compare with an
    older price. Try again shortly (the message names the windows)."""


def analyse_window(
    s3,
    config: Config,
    slot: datetime,
    policy: Policy,
    due: bool,
    why_not_due: str,
    run_url: str,
    still_normalizing: Callable[[list[datetime]], int] | None = None,
) -> dict:
    """Compare the window's price with the previous one, record the decision, draft the alert.

    Returns ``decision`` (``notify`` when the publish task should send), the ledger ``entry`` and the
    alert ``subject``, ``message`` and ``attributes``. A window the ledger already shows as notified
    is never notified again: its entry comes back unchanged with ``decision = notified``.

    Every earlier window the decision looks at (lookback and repeat windows) must be settled: when one
    has a raw record but no canonical CSV yet, ``still_normalizing(those windows)`` (the caller asks its
    scheduler) tells how many are still being normalized; any, and WindowNotReady is raised. Without
    ``still_normalizing`` the window is analysed with the CSVs there are.
    """
    ledger_key = layout.ledger_key(slot, config.changes_prefix)
    existing = store.read_json(s3, config.bucket, ledger_key)
    if existing and existing["decision"] == NOTIFIED:
        log.info(
            "Window %s was already notified (message %s): not again",
            layout.slot_stamp(slot),
            existing["sns_message_id"],
        )
        return {"decision": NOTIFIED, "entry": existing, "subject": "", "message": "", "attributes": {}}

    first = slot - policy.lookback - layout.SLOT * policy.repeat_windows
    prices = store.load_prices(s3, config.bucket, config.analysis_prefix, first, slot)
    if not prices or prices[-1].slot != slot:
        raise WindowFailed(_missing_record_reason(s3, config, slot))
    if still_normalizing is not None:
        pending = records_not_normalized(s3, config, first, slot, {price.slot for price in prices})
        if pending and still_normalizing(pending):
            stamps = ", ".join(layout.slot_stamp(s) for s in pending)
            raise WindowNotReady(f"window {layout.slot_stamp(slot)} waits for the normalization of {stamps}")
    changes = series_changes(prices, policy.lookback)
    change = changes[-1]
    decision, reason = apply_freshness(*classify(change, changes[:-1], policy), due, why_not_due)
    log.info("Window %s: %s (%s)", layout.slot_stamp(slot), decision, reason)
    entry = alerts.ledger_entry(change, policy, decision, reason)
    if decision != NOTIFY:
        store.write_bytes(s3, config.bucket, ledger_key, alerts.ledger_bytes(entry), "application/json")
        return {"decision": decision, "entry": entry, "subject": "", "message": "", "attributes": {}}
    return {
        "decision": decision,
        "entry": entry,
        "subject": alerts.alert_subject(entry),
        "message": alerts.alert_message(entry, run_url),
        "attributes": alerts.alert_attributes(entry),
    }


def records_not_normalized(s3, config: Config, first: datetime, slot: datetime, normalized: set) -> list[datetime]:
    """Windows in ``[first, slot)`` with a raw record but no canonical CSV (none in the usual case,
    when every earlier window has its CSV: then nothing is listed)."""
    gaps = [s for s in layout.slots_between(first, slot) if s not in normalized]
    if not gaps:
        return []
    window_of = {layout.ingestion_window_prefix(s, config.ingestion_prefix): s for s in gaps}
    length = len(next(iter(window_of)))
    found = set()
    for day in layout.day_partitions(gaps[0], gaps[-1]):
        for key in store.list_keys(s3, config.bucket, f"{config.ingestion_prefix}{day}"):
            if key[:length] in window_of:
                found.add(window_of[key[:length]])
    return sorted(found)


def _missing_record_reason(s3, config: Config, slot: datetime) -> str:
    stamp = layout.slot_stamp(slot)
    reasons = store.quarantine_reasons(s3, config.bucket, config.quarantine_prefix, slot)
    if reasons:
        first = reasons[0]
        return f"record for window {stamp} quarantined: {first['reason']} (object {first['source_key']})"
    return f"no normalized record for window {stamp} (the raw object held no record of this slot)"


def already_notified(s3, config: Config, slot: datetime) -> str | None:
    """The SNS message id if the ledger shows the window as notified, else None."""
    entry = store.read_json(s3, config.bucket, layout.ledger_key(slot, config.changes_prefix))
    return entry["sns_message_id"] if entry and entry["decision"] == NOTIFIED else None


def record_notified(s3, config: Config, entry: dict, message_id: str) -> dict:
    """Write the window's ledger entry as notified, with the SNS message id."""
    entry = {**entry, "decision": NOTIFIED, "sns_message_id": message_id}
    slot = datetime.fromisoformat(entry["window_start"].replace("Z", "+00:00"))
    key = layout.ledger_key(slot, config.changes_prefix)
    store.write_bytes(s3, config.bucket, key, alerts.ledger_bytes(entry), "application/json")
    return entry

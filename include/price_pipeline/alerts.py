"""Ledger entries and alert messages, as plain data.

A ledger entry is the deterministic record of one analysed window (``crypto/03-price-changes/``):
the same window, prices and policy always give the same bytes, whichever DAG wrote it.
"""

from __future__ import annotations

import json
from datetime import datetime
from urllib.parse import quote

from include.price_pipeline import layout
from include.price_pipeline.analysis import Change, Policy, Price

SUBJECT_LIMIT = 99  # SNS wants email subjects of less than 100 characters


def iso(moment: datetime) -> str:
    """UTC ISO 8601 with a Z, to the second."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _price(price: Price | None) -> dict | None:
    if price is None:
        return None
    return {
        "timestamp": iso(price.slot),
        "weighted_average": price.weighted_average,
        "source_key": price.source_key,
    }


def ledger_entry(change: Change, policy: Policy, decision: str, reason: str) -> dict:
    """The ledger record of the window whose record is ``change.latest``."""
    slot = change.latest.slot
    return {
        "window_start": iso(slot),
        "window_end": iso(slot + layout.SLOT),
        "pair": change.latest.pair,
        "latest": _price(change.latest),
        "previous": _price(change.previous),
        "change_pct": change.change_pct,
        "abs_change_pct": change.abs_change_pct,
        "direction": change.direction,
        "threshold_pct": policy.threshold_pct,
        "lookback_minutes": policy.lookback_minutes,
        "min_abs_move": policy.min_abs_move,
        "repeat_windows": policy.repeat_windows,
        "decision": decision,
        "reason": reason,
        "sns_message_id": None,
    }


def ledger_bytes(entry: dict) -> bytes:
    """Canonical serialization: one line (Athena's JSON SerDe reads an object per line), sorted keys,
    fixed separators, trailing newline."""
    return (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def format_price(value: float) -> str:
    """Readable price: thousands separators for large prices, enough digits for small ones."""
    if value >= 100:
        return f"{value:,.2f}"
    if value >= 1:
        return f"{value:,.4f}"
    return f"{value:.8f}"


def alert_subject(entry: dict) -> str:
    """E.g. ``ETH/USDT up 2.41% in 5 min: 3,120.55`` (always under the SNS limit)."""
    minutes = _minutes_between(entry["previous"]["timestamp"], entry["latest"]["timestamp"])
    subject = (
        f"{entry['pair']} {entry['direction']} {entry['abs_change_pct']:.2f}% in {minutes} min: "
        f"{format_price(entry['latest']['weighted_average'])}"
    )
    return subject[:SUBJECT_LIMIT]


def alert_message(entry: dict, run_url: str) -> str:
    """The body people read: both prices and times, the change, the threshold and the run link."""
    previous, latest = entry["previous"], entry["latest"]
    return "\n".join(
        [
            f"{entry['pair']} weighted average moved {entry['change_pct']:+.2f}% "
            f"(threshold {entry['threshold_pct']}%).",
            "",
            f"Previous: {format_price(previous['weighted_average'])} at {previous['timestamp']}",
            f"Latest:   {format_price(latest['weighted_average'])} at {latest['timestamp']}",
            f"Window:   {entry['window_start']} to {entry['window_end']} (UTC)",
            "",
            f"Airflow run: {run_url}",
        ]
    )


def alert_attributes(entry: dict) -> dict:
    """SNS message attributes for subscription filter policies (change_pct is a Number)."""
    return {
        "symbol": entry["pair"],
        "direction": entry["direction"],
        "change_pct": round(entry["change_pct"], 4),
    }


def run_url(base_url: str, dag_id: str, run_id: str) -> str:
    """Link to a DAG run in the Airflow 3 UI."""
    return f"{base_url.rstrip('/')}/dags/{dag_id}/runs/{quote(run_id, safe='')}"


def _minutes_between(earlier: str, later: str) -> int:
    start = datetime.fromisoformat(earlier.replace("Z", "+00:00"))
    end = datetime.fromisoformat(later.replace("Z", "+00:00"))
    return int((end - start).total_seconds() // 60)


#: Ops notifications (SnsNotifier failure callback), rendered with the failed task's context.
OPS_SUBJECT = (
    "[price pipeline] "
    "{% if ti.task_id == 'wait_for_price_record' %}Feed stale"
    "{% elif 'quarantined' in (exception | string) %}Record quarantined"
    "{% else %}Task failed{% endif %}"
    ": {{ ti.task_id }} {{ data_interval_start.strftime('%Y-%m-%d %H:%M') }} UTC"
)
OPS_MESSAGE = """\
{% if ti.task_id == 'wait_for_price_record' -%}
Feed stale: no price record arrived for window {{ data_interval_start }} to {{ data_interval_end }}.
{% elif 'quarantined' in (exception | string) -%}
Record quarantined for window {{ data_interval_start }}: the object was copied to the quarantine prefix.
{% else -%}
Task {{ ti.task_id }} failed for window {{ data_interval_start }} to {{ data_interval_end }}.
{% endif -%}
Reason: {{ exception }}
DAG: {{ dag.dag_id }}, run {{ run_id }}, try {{ ti.try_number }}
Log: {{ ti.log_url }}
"""

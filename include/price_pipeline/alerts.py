"""Ledger entries and alert messages, as plain data.

A ledger entry is the deterministic record of one analysed window (``crypto/03-price-changes/``):
the same window, prices and policy always give the same bytes, whichever DAG wrote it.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from urllib.parse import quote

from include.price_pipeline import layout
from include.price_pipeline.analysis import Price, Suppression

SUBJECT_LIMIT = 99  # SNS wants email subjects of less than 100 characters


class UnsafeText(ValueError):
    """Alert text that SNS would refuse or that must not reach people (the message says why)."""


class ClaimsLeft(RuntimeError):
    """Alerts of this run whose publish an earlier try started and never recorded (``ledger.LEFT``): they may
    have been sent, and only ops can release their claims, so the failure is paged whatever the run (*Alert
    claim left*). ``claim_left`` is the mark ``incidents.failures_of`` tests: only this class (and its
    subclasses) carries it, whereas the exception's text may quote a record's, "claim" included."""

    claim_left = True


#: How much of one text from S3 (a key, a reason) a message quotes.
QUOTED_LIMIT = 300


def quoted(text: str) -> str:
    """Text read from S3 as a message shows it: in double quotes, cut at QUOTED_LIMIT characters, line breaks,
    control and non-ASCII characters and Slack's ``<``, ``>``, ``&`` as JSON escapes, so it stays one line and
    can neither forge a line of the message nor become a link or a mention wherever it goes."""
    escaped = json.dumps(str(text)[:QUOTED_LIMIT], ensure_ascii=True)
    return escaped.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _price(price: Price | None) -> dict | None:
    if price is None:
        return None
    return {
        "timestamp": layout.iso(price.slot),
        "weighted_average": price.weighted_average,
        "source_key": price.source_key,
    } | ({"basis": price.basis} if price.basis else {})


def _finite(value: float | None) -> float | None:
    """A number the ledger may store: JSON has no NaN or Infinity (Athena's SerDe and SNS refuse them)."""
    return value if value is None or math.isfinite(value) else None


def suppressed(suppression: Suppression | None) -> dict:
    """The ledger field naming the alert window that suppressed a firing (none for any other decision)."""
    return {} if suppression is None else {"suppressed_by": layout.iso(suppression.window)}


def ledger_bytes(entry: dict) -> bytes:
    """Canonical serialization: one line (Athena's JSON SerDe reads an object per line), sorted keys,
    fixed separators, trailing newline. NaN and Infinity raise ValueError: they never reach the ledger."""
    return (json.dumps(entry, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")


def format_price(value: float) -> str:
    """Readable price: thousands separators for large prices, enough digits for small ones."""
    if value >= 100:
        return f"{value:,.2f}"
    if value >= 1:
        return f"{value:,.4f}"
    return f"{value:.8f}"


def check_subject(subject: str) -> str:
    """``subject`` if SNS accepts it (ASCII printable, no line breaks, under 100 characters, starting with a
    letter, digit or punctuation), else UnsafeText: the stand-in accepts anything, real SNS does not."""
    if not subject or len(subject) >= 100:
        raise UnsafeText(f"SNS subject must be 1 to 99 characters, got {len(subject)}")
    if not all(" " <= char <= "~" for char in subject):
        raise UnsafeText(f"SNS subject must be printable ASCII without line breaks: {subject!r}")
    if subject[0] == " ":
        raise UnsafeText(f"SNS subject must not start with whitespace: {subject!r}")
    return subject


#: Every alert's SNS message attributes, the names subscription filter policies may use (README "Who gets which
#: alert"): ``pair`` (``BTC/USDT``), ``rule`` (its name in the rules file), ``kind`` (``change``, ``crossing``),
#: ``direction`` (``up``, ``down``), ``change_pct`` (a Number, signed, 4 decimals) and ``symbol``, ``pair``'s
#: first name, kept for subscribers filtering on it. A stable contract: names and values only ever get added.
ATTRIBUTES = ("pair", "rule", "kind", "direction", "change_pct", "symbol")


def alert(pair: str, rule: str, view: dict, run_url: str) -> dict:
    """The one alert of a due rule, for every pair and rule kind: the SNS publish operator's ``subject``,
    ``message`` and ``message_attributes``, with ``pair`` and ``rule``. ``view``: the rule's decision as the
    ledger holds it and the window. E.g. ``ETH/USDT up 2.41% in 5 min: 3,120.55`` or ``SOL/USDT crossed 150
    upward: 150.20``; its ``message_attributes`` are :data:`ATTRIBUTES`."""
    reference, latest = view["reference"], view["latest"]
    price = format_price(_number(latest["weighted_average"]))
    if view["kind"] == "crossing":
        what = f"crossed {view['level']:g} {view['direction']}ward"
    else:
        minutes = _minutes_between(reference["timestamp"], latest["timestamp"])
        what = f"{view['direction']} {abs(_number(view['change_pct'])):.2f}% in {minutes} min"
    message = "\n".join(
        [
            f"{pair} weighted average moved {_number(view['change_pct']):+.2f}% (rule {rule}: {view['reason']}).",
            "",
            f"Reference: {format_price(_number(reference['weighted_average']))} at {reference['timestamp']}",
            f"Latest:    {price} at {latest['timestamp']}",
            f"Window:    {view['window_start']} to {view['window_end']} (UTC)",
            "",
            f"Airflow run: {run_url}",
        ]
    )
    attributes = {"pair": pair, "symbol": pair, "rule": rule, "kind": view["kind"], "direction": view["direction"],
                  "change_pct": round(_number(view["change_pct"]), 4)}  # fmt: skip
    return {"pair": pair, "rule": rule, "subject": check_subject(f"{pair} {what}: {price}"[:SUBJECT_LIMIT]),
            "message": message, "message_attributes": attributes}  # fmt: skip


def slack_text(subject: str, message: str) -> str:
    """The alert as Slack mrkdwn: ``&``, ``<`` and ``>`` escaped as Slack asks, so no text can become a
    link, a mention or ``<!channel>``."""
    return f"*{slack_escape(subject)}*\n{slack_escape(message)}"


def slack_escape(text: str) -> str:
    """Slack's three control characters as entities (https://api.slack.com/reference/surfaces/formatting)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _number(value) -> float:
    """A finite number for alert text and attributes, else UnsafeText (SNS refuses a non-finite Number)."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise UnsafeText(f"{value!r} is not a finite number")
    return value


def run_url(base_url: str, dag_id: str, run_id: str) -> str:
    """Link to a DAG run in the Airflow 3 UI."""
    return f"{base_url.rstrip('/')}/dags/{dag_id}/runs/{quote(run_id, safe='')}"


def _minutes_between(earlier: str, later: str) -> int:
    return int((datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds() // 60)


#: The ops message of a live task's failure, rendered with the failed task's context: the detail of the
#: incident it opens (``incidents.failures_of`` says which).
OPS_MESSAGE = """\
{% if ti.task_id == 'wait_for_price_record' -%}
Feed stale: no price record arrived for window {{ data_interval_start | default('(run without a logical date)') }} \
to {{ data_interval_end | default(dag_run.run_after) }}.
{% elif ti.task_id.startswith('fetch_exchange') -%}
The exchange feed wrote nothing for the pairs named below (the other pairs' records were written).
{% elif 'quarantined' in (exception | string) -%}
Record quarantined for window {{ data_interval_start | default('(run without a logical date)') }}: the object was \
copied to the quarantine prefix.
{% else -%}
Task {{ ti.task_id }} failed for window {{ data_interval_start | default('(run without a logical date)') }} \
to {{ data_interval_end | default(dag_run.run_after) }}.
{% endif -%}
Reason: {{ exception }}
DAG: {{ dag.dag_id }}, run {{ run_id }}, try {{ ti.try_number }}
Log: {{ ti.log_url }}
"""

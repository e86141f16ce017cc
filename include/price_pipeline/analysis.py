"""Pure price-change analysis: from a series of normalized prices to one decision per window.

Every decision is a function of the price series and the policy alone (never of what was sent
before), so the live DAG, a native backfill and the bulk history DAG reach the same answer for the
same window, whatever order or parallelism they run in.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from include.price_pipeline import layout

NO_PREVIOUS = "no_previous_record"
BELOW_THRESHOLD = "below_threshold"
BELOW_MIN_MOVE = "below_min_abs_move"
SUPPRESSED_REPEAT = "suppressed_repeat"
SUPPRESSED_BACKFILL = "suppressed_backfill"
INVALID_CHANGE = "invalid_change"  # the change is not a finite number: refused, never published
NOTIFY = "notify"  # due: the window is claimed (PUBLISHING), then published and recorded as NOTIFIED
PUBLISHING = "publishing"  # claimed by one run, which alone may publish and then write NOTIFIED
NOTIFIED = "notified"
#: Decisions no writer may overwrite: the window's alert belongs to whoever claimed it.
CLAIMED = (PUBLISHING, NOTIFIED)
#: The reason of a breach suppressed only because its window ended too long ago (see due_for_subscribers).
LATE_REASON = "window ended more than max_alert_age"


@dataclass(frozen=True)
class Price:
    """One normalized record: its slot, weighted average price, where it came from and, when the Glue job
    names them (its ``superseded`` column), the window's older raw objects it did not use."""

    slot: datetime
    weighted_average: float
    pair: str
    source_key: str
    superseded: tuple[str, ...] = ()


@dataclass(frozen=True)
class Change:
    """A window's price against the latest earlier price within the lookback (if any)."""

    latest: Price
    previous: Price | None
    change_pct: float | None

    @property
    def abs_change_pct(self) -> float | None:
        return None if self.change_pct is None else abs(self.change_pct)

    @property
    def direction(self) -> str:
        if not self.change_pct:
            return "flat"
        return "up" if self.change_pct > 0 else "down"


@dataclass(frozen=True)
class Policy:
    """Per-run knobs: the % threshold and the optional de-noising rules (0 = off)."""

    threshold_pct: float = 1.0
    lookback_minutes: int = 60
    min_abs_move: float = 0.0
    repeat_windows: int = 0

    @property
    def lookback(self) -> timedelta:
        return timedelta(minutes=self.lookback_minutes)

    @classmethod
    def from_params(cls, params) -> Policy:
        """The policy a DAG run's params ask for (see ``settings.policy_params``)."""
        return cls(
            threshold_pct=params["threshold_pct"],
            lookback_minutes=params["lookback_minutes"],
            min_abs_move=params["min_abs_move"],
            repeat_windows=params["repeat_windows"],
        )


def parse_canonical_csv(body: bytes) -> Price:
    """Read the Glue job's canonical CSV object of the default pair (header plus one row) into a :class:`Price`."""
    prices = parse_canonical_rows(body)
    if len(prices) != 1:
        raise ValueError(f"canonical CSV must hold exactly one row, found {len(prices)}")
    return prices[0]


def parse_canonical_rows(body: bytes) -> list[Price]:
    """Every row of a canonical CSV object (a window's other-pairs CSV holds one per pair) as a :class:`Price`."""
    prices = []
    for row in csv.DictReader(io.StringIO(body.decode("utf-8"))):
        missing = [c for c in layout.CANONICAL_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"canonical CSV lacks columns {missing}")
        weighted_average = float(row["weighted_average"])
        if not (math.isfinite(weighted_average) and weighted_average > 0):
            raise ValueError(
                f"canonical CSV weighted_average {row['weighted_average']!r} is not a finite positive number"
            )
        prices.append(
            Price(
                slot=datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00")),
                weighted_average=weighted_average,
                pair=row["pair"],
                source_key=row["source_key"],
                superseded=tuple(json.loads(row["superseded"])) if row.get("superseded") else (),
            )
        )
    return prices


def pct_change(previous: float, latest: float) -> float:
    """Signed % change from ``previous`` to ``latest``."""
    return (latest - previous) / previous * 100.0


def series_changes(prices: list[Price], lookback: timedelta) -> list[Change]:
    """Each price against the latest earlier price no older than ``lookback``, in slot order."""
    ordered = sorted(prices, key=lambda p: p.slot)
    changes, previous = [], None
    for price in ordered:
        if previous is not None and price.slot - previous.slot <= lookback:
            changes.append(Change(price, previous, pct_change(previous.weighted_average, price.weighted_average)))
        else:
            changes.append(Change(price, None, None))
        previous = price
    return changes


def is_breach(change: Change, policy: Policy) -> bool:
    """Above the % threshold and, when set, the absolute move in price units."""
    if change.change_pct is None or not math.isfinite(change.change_pct):
        return False
    if change.abs_change_pct <= policy.threshold_pct:
        return False
    return abs(change.latest.weighted_average - change.previous.weighted_average) >= policy.min_abs_move


def classify(change: Change, earlier: list[Change], policy: Policy) -> tuple[str, str]:
    """``(decision, reason)`` for ``change``, before the freshness rule; ``earlier`` precede it in order.

    With ``repeat_windows = N``, a breach right after another breach in the same direction within the
    previous N windows of the series is a continuing move and is suppressed.
    """
    if change.previous is None:
        return NO_PREVIOUS, f"no earlier record within the {policy.lookback_minutes}-minute lookback"
    if not math.isfinite(change.change_pct):
        return (
            INVALID_CHANGE,
            f"change from {change.previous.weighted_average!r} to {change.latest.weighted_average!r} "
            "is not a finite number: refused",
        )
    if change.abs_change_pct <= policy.threshold_pct:
        return BELOW_THRESHOLD, f"|change| {change.abs_change_pct:.4f}% <= threshold {policy.threshold_pct}%"
    if not is_breach(change, policy):
        return BELOW_MIN_MOVE, f"absolute move below min_abs_move {policy.min_abs_move}"
    if policy.repeat_windows:
        recent = [c for c in earlier if change.latest.slot - c.latest.slot <= layout.SLOT * policy.repeat_windows]
        if any(is_breach(c, policy) and c.direction == change.direction for c in recent):
            return (
                SUPPRESSED_REPEAT,
                f"move continues {change.direction} within {policy.repeat_windows} windows",
            )
    return NOTIFY, f"|change| {change.abs_change_pct:.4f}% > threshold {policy.threshold_pct}%"


def apply_freshness(decision: str, reason: str, due: bool, why_not_due: str) -> tuple[str, str]:
    """Turn a NOTIFY into SUPPRESSED_BACKFILL when the window is not due for subscribers."""
    if decision == NOTIFY and not due:
        return SUPPRESSED_BACKFILL, why_not_due
    return decision, reason


def due_for_subscribers(
    run_type: str, window_end: datetime, now: datetime, max_alert_age_minutes: int, notify_on_backfill: bool
) -> tuple[bool, str]:
    """Whether a breach in this window may notify subscribers, and if not, why (no wall-clock figures)."""
    if notify_on_backfill:
        return True, ""
    if run_type == "backfill":
        return False, "backfill run (notify_on_backfill is off)"
    if now - window_end > timedelta(minutes=max_alert_age_minutes):
        return False, f"{LATE_REASON} ({max_alert_age_minutes} min) ago"
    return True, ""


def suppressed_for_lateness(decision: str, reason: str) -> bool:
    """A breach a live run would have sent but for its record arriving late: news for ops."""
    return decision == SUPPRESSED_BACKFILL and reason.startswith(LATE_REASON)

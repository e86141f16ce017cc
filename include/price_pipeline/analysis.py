"""What every decision stands on: normalized prices, the ledger's vocabulary, the cooldown and the
freshness rule (the rule kinds themselves are ``rules``). A decision is a function of the price series and
the rules alone, never of what was sent, so every DAG reaches the same answer in any order or parallelism.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from include.price_pipeline import layout

#: Each rule's decision for one window (``rules.evaluate``), and what the ledger makes of a due one.
NOTIFY = "notify"  # due: the window is claimed (PUBLISHING), then published and recorded as NOTIFIED
NO_PREVIOUS = "no_previous_record"
BELOW_THRESHOLD = "below_threshold"
NOT_CROSSED = "not_crossed"
BELOW_MIN_MOVE = "below_min_abs_move"
SUPPRESSED_COOLDOWN = "suppressed_cooldown"
SUPPRESSED_BACKFILL = "suppressed_backfill"
SUPPRESSED_QUIET_HOURS = "suppressed_quiet_hours"  # a firing in the rule's quiet hours: recorded, never sent
INVALID_CHANGE = "invalid_change"  # the change is not a finite number: refused, never published
PUBLISHING = "publishing"  # claimed by one run, which alone may publish and then write NOTIFIED
NOTIFIED = "notified"
#: Decisions no writer may overwrite: the window's alert belongs to whoever claimed it.
CLAIMED = (PUBLISHING, NOTIFIED)
#: A rule's decisions that are a firing, sent or not (the page marks them, the bulk summary counts them).
FIRED = (NOTIFY, PUBLISHING, NOTIFIED, SUPPRESSED_BACKFILL, SUPPRESSED_COOLDOWN, SUPPRESSED_QUIET_HOURS)
#: The reason of a breach suppressed only because its window ended too long ago (see due_for_subscribers).
LATE_REASON = "window ended more than max_alert_age"
#: Cooldown checkpoints count from here (see :func:`suppressed_by`).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Price:
    """One normalized record: its slot, weighted average price, where it came from and, when the Glue job
    names them (its ``superseded`` column), the window's older raw objects it did not use; ``basis`` is
    ``typical_price`` when the price is that approximation (the CSV's ``weighted_average_basis``), else empty."""

    slot: datetime
    weighted_average: float
    pair: str
    source_key: str
    superseded: tuple[str, ...] = ()
    basis: str = ""


def parse_canonical_csv(body: bytes) -> Price:
    """Read the Glue job's canonical CSV object of the default pair (header plus one row) into a :class:`Price`."""
    prices = parse_canonical_rows(body)
    if len(prices) != 1:
        raise ValueError(f"canonical CSV must hold exactly one row, found {len(prices)}")
    return prices[0]


#: The one weighted average basis that is an approximation (a feed's opt-in, ``rules.Source``): the ledger's
#: ``latest`` and the page carry it; the exact ones (record, volumes, no_trade) are not repeated there.
APPROXIMATION = "typical_price"


def parse_canonical_rows(body: bytes) -> list[Price]:
    """Every row of a canonical CSV object (a window's pairs.csv holds one per other pair) as a :class:`Price`."""
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
        slot = datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00"))
        superseded = tuple(json.loads(row["superseded"])) if row.get("superseded") else ()
        basis = APPROXIMATION if row.get("weighted_average_basis") == APPROXIMATION else ""
        prices.append(Price(slot, weighted_average, row["pair"], row["source_key"], superseded, basis))
    return prices


def pct_change(previous: float, latest: float) -> float:
    """Signed % change from ``previous`` to ``latest``."""
    return (latest - previous) / previous * 100.0


# --- the cooldown: one rule for every pair and rule kind (repeat_windows = N is a cooldown of N windows) ---


class NeedEarlier(Exception):
    """A cooldown decision needs to know whether ``window`` fired, and the prices at hand do not tell."""

    def __init__(self, window: datetime):
        super().__init__(f"needs whether window {layout.slot_stamp(window)} fired")
        self.window = window


class Suppression(NamedTuple):
    """Why a firing is suppressed: the alert window it comes within the cooldown of, or, in a run of
    firings longer than a segment, the run's last firing before the ``checkpoint`` it counts from."""

    window: datetime
    checkpoint: datetime | None = None

    def reason(self, direction: str, within: str) -> str:
        if self.checkpoint is None:
            return f"alerted {direction} at {layout.slot_stamp(self.window)}, within {within}"
        return (
            f"run of {direction} firings began before {layout.slot_stamp(self.checkpoint)} - one segment: counted "
            f"from its last firing before that checkpoint, at {layout.slot_stamp(self.window)}, within {within}"
        )


def cooldown_segment(cooldown: timedelta) -> timedelta:
    """How long a run of firings may be and still be decided from its first firing: the smallest whole
    number of days longer than the cooldown (one day for any cooldown under a day)."""
    return timedelta(days=cooldown // timedelta(days=1) + 1)


def cooldown_reach(cooldown: timedelta) -> timedelta:
    """How far before a window its cooldown decision may look for firings: the window's checkpoint is less
    than a segment back, and the run is followed at most a segment and a cooldown before that."""
    return 2 * cooldown_segment(cooldown) + cooldown


def suppressed_by(
    slot: datetime, direction: str, fired: Callable[[datetime], str | None], cooldown: timedelta
) -> Suppression | None:
    """Whether the firing (in ``direction``) of the window at ``slot`` alerts (None) or what suppresses it: the
    cooldown and its bound, README "Pairs and alert rules" (``cooldown_minutes``), with the segments of
    :func:`cooldown_segment` since EPOCH as the checkpoints. ``fired(window)`` is the direction a window fired
    in before any cooldown (None: no firing or no record), asked at most :func:`cooldown_reach` before ``slot``;
    it may raise NeedEarlier.
    """
    segment = cooldown_segment(cooldown)
    checkpoint = EPOCH + (slot - EPOCH) // segment * segment
    run = [slot]  # the run's firings, latest first
    while True:
        before = reversed(layout.slots_between(run[-1] - cooldown, run[-1]))
        earlier = next((window for window in before if fired(window) == direction), None)
        if earlier is None:
            last, counted_from, run = run[-1], None, run[:-1]  # the run's first firing alerts
            break
        if earlier < checkpoint - segment:
            run.append(earlier)
            last = next(firing for firing in run if firing < checkpoint)
            counted_from, run = checkpoint, [firing for firing in run if firing >= checkpoint]
            break
        run.append(earlier)
    for firing in reversed(run):
        if firing - last > cooldown:
            last, counted_from = firing, None
        if firing == slot:
            return None if last == slot else Suppression(last, counted_from)
    return None


def read_back_to(slot: datetime, needed: datetime, cooldown: timedelta) -> datetime:
    """The first window to read when the cooldown decision at ``slot`` raised NeedEarlier(``needed``): a
    cooldown before it, or as far again as the run was followed so far (doubling batches: a long run takes
    a few rounds of reads, not one per cooldown)."""
    return needed - max(cooldown, slot - needed)


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

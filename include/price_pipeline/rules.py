"""The one home of the alert rules: the rules file's schema, its validator and each rule kind's meaning; the
file and the rule kinds are README's "Pairs and alert rules". Plain data and pure functions: the DAGs
validate the file when they are parsed (no AWS call) and fail with one line naming the pair, rule and field.
"""

from __future__ import annotations

import bisect
import importlib.util
import json
import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from functools import cached_property, partial
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from include.price_pipeline import layout
from include.price_pipeline.analysis import (  # noqa: F401 - the decisions, re-exported: rules.NOTIFY, ...
    BELOW_MIN_MOVE,
    BELOW_THRESHOLD,
    INVALID_CHANGE,
    NO_PREVIOUS,
    NOT_CROSSED,
    NOTIFY,
    SUPPRESSED_COOLDOWN,
    SUPPRESSED_QUIET_HOURS,
    NeedEarlier,
    Price,
    Suppression,
    cooldown_reach,
    pct_change,
    read_back_to,
    suppressed_by,
)

#: The rules file the settings default to: today's single-pair behaviour (``include/rules/default.json``).
DEFAULT_RULES_FILE = Path(__file__).resolve().parents[1] / "rules" / "default.json"
REPO_ROOT = Path(__file__).resolve().parents[2]

CHANGE = "change"
CROSSING = "crossing"
KINDS = (CHANGE, CROSSING)
DIRECTIONS = ("up", "down", "both")
MAX_MINUTES = 1440
MAX_COOLDOWN_MINUTES = 7 * 1440
MAX_RULES_FILE_BYTES = 1 << 20
#: A copy of the Glue job's plausible prices (tests/unit/test_rules.py checks it): a level, min_abs_move or
#: threshold_pct beyond what two such prices make could never fire, so the file and the params refuse it.
MIN_PRICE = 1e-10
MAX_PRICE = 1e10
MAX_THRESHOLD_PCT = MAX_PRICE / MIN_PRICE * 100

_PAIR = re.compile(r"[A-Z0-9]{2,12}/[A-Z0-9]{2,12}")
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


class RulesError(ValueError):
    """The rules file is not valid (one line: the file, the pair, the rule and the field)."""


@dataclass(frozen=True)
class QuietHours:
    """Hours of the local wall clock of ``time_zone`` in which a rule's firing is recorded, not sent, unless
    its |change| is above ``unless_pct`` (README "Quiet hours"). ``start`` after ``end`` spans midnight."""

    start: time
    end: time
    time_zone: str
    unless_pct: float | None = None

    def local(self, slot: datetime) -> time:
        return slot.astimezone(ZoneInfo(self.time_zone)).time()

    def hold(self, slot: datetime) -> bool:
        """Whether the window starting at ``slot`` starts inside the quiet hours (at ``start``: inside; at
        ``end``: outside), by the wall clock of its zone on that day: daylight saving moves them in UTC."""
        at = self.local(slot)
        return self.start <= at < self.end if self.start < self.end else not self.end <= at < self.start

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M} {self.time_zone}"


@dataclass(frozen=True)
class Rule:
    """One rule of one pair; fields a kind does not use keep their defaults."""

    name: str
    kind: str
    threshold_pct: float = 0.0  # change
    minutes: int = 5  # change: compare with the record this many minutes earlier
    level: float = 0.0  # crossing
    direction: str = "both"  # crossing
    tolerance_minutes: int = 0  # how much earlier than wanted the reference record may be
    min_abs_move: float = 0.0
    cooldown_minutes: int = 0
    quiet_hours: QuietHours | None = None

    # Cached, as the hash: asked once per window decided (a year of one pair is 105,120 decisions).
    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash(tuple(getattr(self, name) for name in self.__dataclass_fields__))

    def __getstate__(self) -> dict:
        """The fields alone: a string's hash differs from one process to the next, so a cached one must not
        travel with a pickled rule."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @cached_property
    def reference_offset(self) -> timedelta:
        """How far before the window's slot the reference record should be."""
        return timedelta(minutes=self.minutes if self.kind == CHANGE else 5)

    @cached_property
    def tolerance(self) -> timedelta:
        """How much earlier than wanted the reference record may be."""
        return timedelta(minutes=self.tolerance_minutes)

    @property
    def cooldown(self) -> timedelta:
        return timedelta(minutes=self.cooldown_minutes)

    @property
    def history(self) -> timedelta:
        """How far back from a window its decision may look: its reference (offset and tolerance) and, with
        a cooldown, the references of the earlier firings its cooldown may follow (``analysis.cooldown_reach``)."""
        reach = cooldown_reach(self.cooldown) if self.cooldown_minutes else timedelta(0)
        return reach + self.reference_offset + self.tolerance


@dataclass(frozen=True)
class Source:
    """Where the exchange feed takes a pair's candles (a ccxt exchange id) and how its ``weightedAverage`` is
    had: ``volumes`` or ``typical_price`` (README "Exchange feed")."""

    exchange: str = "binance"
    weighted_average: str = "volumes"


@dataclass(frozen=True)
class Rules:
    """A validated rules file: the default pair and each pair's rules, in file order, and each pair's
    exchange feed source."""

    default_pair: str
    pairs: dict[str, tuple[Rule, ...]]
    feed: dict[str, Source] = field(default_factory=dict)

    def history(self) -> timedelta:
        return max(rule.history for rules in self.pairs.values() for rule in rules)

    @property
    def default_rule(self) -> Rule:
        """The default pair's first rule."""
        return self.pairs[self.default_pair][0]


@dataclass(frozen=True)
class Decision:
    """What one rule decided for one window of one pair."""

    rule: str
    kind: str
    decision: str
    reason: str
    direction: str  # up, down or flat
    change_pct: float | None
    reference: Price | None
    suppressed_by: Suppression | None = None  # a firing the cooldown suppressed: the window it counts from


# --- loading and validation --------------------------------------------------------------------------


def resolve_path(setting: str) -> Path:
    """The rules file a ``PRICE_RULES_FILE`` value names (relative paths from the repository root)."""
    if not setting:
        return DEFAULT_RULES_FILE
    path = Path(setting)
    return path if path.is_absolute() else REPO_ROOT / path


def load(path: str | Path) -> Rules:
    """Read and validate a rules file; RulesError with a one-line reason when it is not valid."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_RULES_FILE_BYTES + 1)
    except OSError as error:
        raise RulesError(f"rules file {path}: cannot be read ({error.strerror})") from None
    where = f"rules file {path}"
    if len(raw) > MAX_RULES_FILE_BYTES:
        raise RulesError(f"{where}: larger than {MAX_RULES_FILE_BYTES} bytes")
    try:
        document = json.loads(raw.decode("utf-8"), object_pairs_hook=lambda pairs: _unique_keys(pairs, where))
    except RulesError:
        raise
    except RecursionError:
        raise RulesError(f"{where}: not JSON it can read (nested too deeply)") from None
    except ValueError as error:  # not UTF-8, not JSON, an integer of more digits than Python converts
        raise RulesError(f"{where}: not JSON ({error})") from None
    return parse(document, str(path))


def _unique_keys(pairs: list[tuple[str, object]], where: str) -> dict:
    """A JSON object of the file, refused when a key appears twice: json keeps the last one silently (a pair
    listed twice lost its first rules, a rule's field given twice its first value)."""
    document = {}
    for key, value in pairs:
        if key in document:
            raise RulesError(f"{where}: key {_shown(key)} appears twice in one object (one would be ignored)")
        document[key] = value
    return document


def _shown(value) -> str:
    """A value of the file as a one-line reason shows it: its repr, cut (a 400-digit number is not quoted whole)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}... ({len(text)} characters)"


def parse(document, source: str = "rules file") -> Rules:
    """Validate a rules document (the file's parsed JSON)."""
    where = f"rules file {source}"
    if not isinstance(document, dict):
        raise RulesError(f"{where}: must be an object with default_pair and pairs")
    unknown = sorted(set(document) - {"default_pair", "pairs", "feed"})
    if unknown:
        raise RulesError(f"{where}: unknown field {unknown[0]!r} (allowed: default_pair, pairs, feed)")
    pairs = document.get("pairs")
    if not isinstance(pairs, dict) or not pairs:
        raise RulesError(f"{where}: pairs must be a non-empty object of pair -> list of rules")
    parsed = {}
    for pair, rules in pairs.items():
        if not isinstance(pair, str) or not _PAIR.fullmatch(pair):
            raise RulesError(f"{where}: pair {pair!r} must be BASE/QUOTE in capitals (e.g. ETH/USDT)")
        if not isinstance(rules, list) or not rules:
            raise RulesError(f"{where}: pair {pair}: must have a non-empty list of rules")
        parsed[pair] = tuple(_rule(rule, f"{where}: pair {pair}", index) for index, rule in enumerate(rules))
        names = [rule.name for rule in parsed[pair]]
        duplicate = next((name for name in names if names.count(name) > 1), None)
        if duplicate:
            raise RulesError(f"{where}: pair {pair}: rule name {duplicate!r} is used twice")
    slugs = [layout.pair_slug(pair) for pair in parsed]
    if len(set(slugs)) != len(slugs):
        raise RulesError(f"{where}: two pairs share the key {next(s for s in slugs if slugs.count(s) > 1)}")
    default = document.get("default_pair")
    if default not in parsed:
        raise RulesError(f"{where}: default_pair {default!r} must be one of the pairs ({', '.join(parsed)})")
    return Rules(default_pair=default, pairs=parsed, feed=_feed(document.get("feed", {}), parsed, where))


#: Exchanges whose raw candles carry the quote volume the job derives ``weightedAverage`` from (Binance's
#: klines: base and quote asset volume); any other exchange's ccxt candles carry the base volume only.
QUOTE_VOLUME_EXCHANGES = ("binance", "binanceus")
WEIGHTED_AVERAGE_SOURCES = ("volumes", "typical_price")
_EXCHANGE = re.compile(r"[a-z][a-z0-9]{1,31}")


def _feed(raw, pairs: dict, where: str) -> dict[str, Source]:
    """Each pair's exchange feed source from the file's ``feed`` (README "Exchange feed"); a pair whose
    exchange's candles carry no quote volume is refused unless it opts into typical_price."""
    if not isinstance(raw, dict) or set(raw) - {"exchange", "pairs"}:
        raise RulesError(f"{where}: feed must be an object of exchange and pairs")
    default = _exchange(raw, "binance", f"{where}: feed")
    overrides = raw.get("pairs", {})
    if not isinstance(overrides, dict) or set(overrides) - set(pairs):
        raise RulesError(f"{where}: feed.pairs must be an object of configured pairs (got {sorted(overrides)})")
    sources = {}
    for pair in pairs:
        own = overrides.get(pair, {})
        at = f"{where}: feed.pairs {pair}"
        if not isinstance(own, dict) or set(own) - {"exchange", "weighted_average"}:
            raise RulesError(f"{at}: must be an object of exchange and weighted_average")
        exchange = _exchange(own, default, at)
        basis = _source_field(own, "weighted_average", WEIGHTED_AVERAGE_SOURCES.__contains__, "volumes", at)
        if basis == "volumes" and exchange not in QUOTE_VOLUME_EXCHANGES:
            raise RulesError(
                f"{at}: {exchange}'s candles carry no quote volume to derive weightedAverage from (only "
                f"{', '.join(QUOTE_VOLUME_EXCHANGES)}' do); set weighted_average to typical_price to accept "
                "(high + low + close) / 3 instead"
            )
        sources[pair] = Source(exchange, basis)
    return sources


def _exchange(raw: dict, default: str, where: str) -> str:
    """A feed's exchange id, refused unless the installed ccxt has its module file (``ccxt/<id>.py``): checked
    without importing ccxt, since the DAGs read this file each time they are parsed."""
    exchange = _source_field(raw, "exchange", _EXCHANGE.fullmatch, default, where)
    ccxt = importlib.util.find_spec("ccxt")
    if ccxt is None or not any(Path(folder, f"{exchange}.py").is_file() for folder in ccxt.submodule_search_locations):
        known = "ccxt is not installed" if ccxt is None else "see ccxt.exchanges"
        raise RulesError(f"{where}: exchange {exchange!r} is not one ccxt knows ({known})")
    return exchange


def _source_field(raw: dict, name: str, valid, default: str, where: str) -> str:
    value = raw.get(name, default)
    if not isinstance(value, str) or not valid(value):
        raise RulesError(f"{where}: {name} {value!r} is not valid")
    return value


_COMMON = {"name", "kind", "tolerance_minutes", "min_abs_move", "cooldown_minutes", "quiet_hours"}
_FIELDS = {CHANGE: _COMMON | {"threshold_pct", "minutes"}, CROSSING: _COMMON | {"level", "direction"}}


def _rule(raw, where: str, index: int) -> Rule:
    if not isinstance(raw, dict):
        raise RulesError(f"{where}, rule {index + 1}: must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RulesError(f"{where}, rule {index + 1}: name must be 1-40 of a-z, 0-9, '-' (got {name!r})")
    where = f"{where}, rule {name}"
    kind = raw.get("kind")
    if kind not in KINDS:
        raise RulesError(f"{where}: kind must be one of {', '.join(KINDS)} (got {kind!r})")
    unknown = sorted(set(raw) - _FIELDS[kind])
    if unknown:
        raise RulesError(f"{where}: unknown field {unknown[0]!r} for a {kind} rule")
    values = {
        "tolerance_minutes": _minutes(raw, "tolerance_minutes", where, 0, MAX_MINUTES, default=0, multiple=False),
        "min_abs_move": _number(raw, "min_abs_move", where, MAX_PRICE, default=0.0),
        "cooldown_minutes": _minutes(raw, "cooldown_minutes", where, 0, MAX_COOLDOWN_MINUTES, default=0),
        "quiet_hours": _quiet_hours(raw.get("quiet_hours"), f"{where}: quiet_hours"),
    }
    if kind == CHANGE:
        values["threshold_pct"] = _number(raw, "threshold_pct", where, MAX_THRESHOLD_PCT)
        values["minutes"] = _minutes(raw, "minutes", where, 5, MAX_MINUTES, default=5)
    else:
        values["level"] = _number(raw, "level", where, MAX_PRICE, positive=True)
        direction = raw.get("direction", "both")
        if direction not in DIRECTIONS:
            raise RulesError(f"{where}: direction must be one of {', '.join(DIRECTIONS)} (got {direction!r})")
        values["direction"] = direction
    return Rule(name=name, kind=kind, **values)


_CLOCK = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


def _quiet_hours(raw, where: str) -> QuietHours | None:
    """A rule's ``quiet_hours``: ``{"from": "23:00", "to": "07:00", "time_zone": "Europe/Berlin"}`` and
    optionally ``unless_pct``; None when the rule has none."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"from", "to", "time_zone", "unless_pct"}:
        raise RulesError(f"{where}: must be an object of from, to, time_zone and optionally unless_pct")
    clock = {}
    for name in ("from", "to"):
        value = raw.get(name)
        if not isinstance(value, str) or not _CLOCK.fullmatch(value):
            raise RulesError(f"{where}: {name} must be HH:MM, 00:00 to 23:59 (got {_shown(value)})")
        clock[name] = time.fromisoformat(value)
    if clock["from"] == clock["to"]:
        raise RulesError(f"{where}: from and to are the same time (no quiet hours, or all day?)")
    zone = raw.get("time_zone")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, TypeError, ValueError):
        raise RulesError(
            f"{where}: time_zone must be an IANA time zone, e.g. Europe/Berlin (got {_shown(zone)})"
        ) from None
    unless = _number(raw, "unless_pct", where, MAX_THRESHOLD_PCT) if "unless_pct" in raw else None
    return QuietHours(clock["from"], clock["to"], zone, unless)


def _number(raw: dict, field: str, where: str, high: float, default: float | None = None,
            positive: bool = False) -> float:  # fmt: skip
    value = raw.get(field, default)
    if value is None:
        raise RulesError(f"{where}: {field} is required")
    # Compared, never converted, before it is known to fit: float() of a 400-digit integer overflows.
    valid = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= high
    if not valid or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise RulesError(f"{where}: {field} must be a finite number {bound} and at most {high:g} (got {_shown(value)})")
    return float(value)


def _minutes(raw: dict, field: str, where: str, low: int, high: int, default: int, multiple: bool = True) -> int:
    value = raw.get(field, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high or (multiple and value % 5):
        shape = "a multiple of 5 " if multiple else "whole minutes "
        raise RulesError(f"{where}: {field} must be {shape}from {low} to {high} (got {_shown(value)})")
    return value


#: The DAG params that override one change rule's fields for a run (``with_overrides``).
OVERRIDES = ("threshold_pct", "lookback_minutes", "min_abs_move", "repeat_windows")


def with_overrides(rules: Rules, params) -> Rules:
    """The rules a DAG run uses: its params (OVERRIDES; absent or None: the file's value) override the change
    rule ``rule`` of the pair ``pair`` (default: the default pair's first change rule). RulesError, one line,
    for a pair or rule the file does not have, a rule that is no change rule, or a look-back out of range."""
    pair = params.get("pair") or rules.default_pair
    if pair not in rules.pairs:
        raise RulesError(f"param pair {_shown(pair)} is not a pair of the rules file ({', '.join(rules.pairs)})")
    named, change_rules = params.get("rule"), [rule for rule in rules.pairs[pair] if rule.kind == CHANGE]
    rule = next((r for r in rules.pairs[pair] if r.name == named), None) if named else next(iter(change_rules), None)
    if named and rule not in change_rules:
        what = "has no rule" if rule is None else f"has {rule.kind} rule"
        raise RulesError(f"param rule: pair {pair} {what} {_shown(named)}; the params override one of its change "
                         f"rules ({', '.join(r.name for r in change_rules) or 'it has none'})")  # fmt: skip
    given = {name: params[name] for name in OVERRIDES if params.get(name) is not None}
    if not given:
        return rules
    if rule is None:
        raise RulesError(f"params {', '.join(given)}: pair {pair} has no change rule to override")
    changes = {}
    if "threshold_pct" in given:
        changes["threshold_pct"] = float(given["threshold_pct"])
    if "lookback_minutes" in given:
        lookback = int(given["lookback_minutes"])
        if not 5 <= lookback <= rule.minutes + MAX_MINUTES:
            raise RulesError(f"param lookback_minutes {lookback}: rule {rule.name} of pair {pair} takes 5 to "
                             f"{rule.minutes + MAX_MINUTES}")  # fmt: skip
        changes["tolerance_minutes"] = max(0, lookback - rule.minutes)
    if "min_abs_move" in given:
        changes["min_abs_move"] = float(given["min_abs_move"])
    if "repeat_windows" in given:
        changes["cooldown_minutes"] = int(given["repeat_windows"]) * 5
    pair_rules = tuple(replace(r, **changes) if r is rule else r for r in rules.pairs[pair])
    return replace(rules, pairs={**rules.pairs, pair: pair_rules})


# --- evaluation --------------------------------------------------------------------------------------


class Series:
    """One pair's prices by slot, for evaluating rules at any of its windows."""

    def __init__(self, prices: list[Price]):
        self.prices = sorted(prices, key=lambda price: price.slot)
        self.slots = [price.slot for price in self.prices]
        self._by_slot = dict(zip(self.slots, self.prices, strict=True))

        self._raw: dict[tuple[Rule, datetime], Decision] = {}

    def at(self, slot: datetime) -> Price | None:
        return self._by_slot.get(slot)

    def raw(self, rule: Rule, slot: datetime) -> Decision:
        """The rule's decision at ``slot`` before the cooldown (remembered: cooldowns ask again)."""
        decision = self._raw.get((rule, slot))
        if decision is None:
            decision = self._raw[rule, slot] = _raw(rule, self, slot)
        return decision

    def reference(self, rule: Rule, slot: datetime) -> Price | None:
        """The latest record at or before ``slot - offset`` and no earlier than ``tolerance`` before that."""
        index = _reference_index(rule, self.slots, slot)
        return None if index is None else self.prices[index]


def _reference_index(rule: Rule, slots: list[datetime], slot: datetime) -> int | None:
    """Index in the sorted ``slots`` of the rule's reference record for the window at ``slot``, if any."""
    wanted = slot - rule.reference_offset
    index = bisect.bisect_right(slots, wanted) - 1
    if index < 0 or wanted - slots[index] > rule.tolerance:
        return None
    return index


def slots_read(
    rules: tuple[Rule, ...], slots: list[datetime], slot: datetime, known: list[Price] = ()
) -> set[datetime]:
    """The slots among ``slots`` (those with a record) whose records the rules' decisions at ``slot`` read,
    given the records ``known`` already read: the window's own, each rule's reference and, for a firing with
    a cooldown, those of the earlier windows it follows back. Read them and ask again until nothing new is
    asked for: ``evaluate`` then decides as over all records, and a quiet window reads one per rule."""
    ordered = sorted(slots)
    listed = set(ordered)
    series = Series(list(known))
    read = set()
    for rule in rules:
        read |= _inputs(rule, ordered, listed, slot)
        if rule.cooldown_minutes:
            read |= _cooldown_reads(rule, ordered, listed, series, slot)
    return read


def _inputs(rule: Rule, ordered: list[datetime], listed: set[datetime], window: datetime) -> set[datetime]:
    """The records a rule's decision at ``window`` reads before the cooldown: the window's and its reference."""
    if window not in listed:
        return set()
    index = _reference_index(rule, ordered, window)
    return {window} if index is None else {window, ordered[index]}


def _cooldown_reads(rule: Rule, ordered: list[datetime], listed: set[datetime], series: Series, slot: datetime):
    """The records a cooldown decision at ``slot`` reads, as far as the records read (``series``) tell."""
    consulted = set()

    def fired(window: datetime) -> str | None:
        inputs = _inputs(rule, ordered, listed, window)
        consulted.update(inputs)
        if any(series.at(at) is None for at in inputs):
            raise NeedEarlier(window)
        return _fired(rule, series, window)

    try:
        direction = fired(slot)
        if direction is not None:
            suppressed_by(slot, direction, fired, rule.cooldown)
    except NeedEarlier as need:
        if need.window != slot:  # a batch: a cooldown, or as far again as the run was followed
            for window in layout.slots_between(
                read_back_to(slot, need.window, rule.cooldown), need.window + layout.SLOT
            ):
                consulted |= _inputs(rule, ordered, listed, window)
    return consulted


def _direction(change_pct: float | None) -> str:
    if not change_pct:
        return "flat"
    return "up" if change_pct > 0 else "down"


def _raw(rule: Rule, series: Series, slot: datetime) -> Decision:
    """The rule's decision at ``slot`` before the cooldown (the window's price must be in the series)."""
    latest = series.at(slot)
    reference = series.reference(rule, slot)
    if reference is None:
        wanted = rule.reference_offset.total_seconds() // 60
        reason = f"no record from {wanted:.0f} to {wanted + rule.tolerance_minutes:.0f} minutes earlier"
        return Decision(rule.name, rule.kind, NO_PREVIOUS, reason, "flat", None, None)
    change = pct_change(reference.weighted_average, latest.weighted_average)
    direction = _direction(change)
    if not math.isfinite(change):
        reason = f"change from {reference.weighted_average!r} to {latest.weighted_average!r} is not a finite number"
        return Decision(rule.name, rule.kind, INVALID_CHANGE, reason, direction, None, reference)

    def decided(decision: str, reason: str) -> Decision:
        return Decision(rule.name, rule.kind, decision, reason, direction, change, reference)

    if rule.kind == CHANGE:
        if abs(change) <= rule.threshold_pct:
            return decided(BELOW_THRESHOLD, f"|change| {abs(change):.4f}% <= threshold {rule.threshold_pct}%")
        fired = f"|change| {abs(change):.4f}% over {rule.minutes} min > threshold {rule.threshold_pct}%"
    else:
        before, now = reference.weighted_average >= rule.level, latest.weighted_average >= rule.level
        crossed = "up" if now and not before else "down" if before and not now else None
        if crossed is None or rule.direction not in (crossed, "both"):
            side = "at or above" if now else "below"
            return decided(NOT_CROSSED, f"{side} {rule.level:g} as before" if crossed is None else f"crossed {crossed}")
        direction = crossed
        fired = f"crossed {rule.level:g} {crossed}ward: {reference.weighted_average:g} to {latest.weighted_average:g}"
    if abs(latest.weighted_average - reference.weighted_average) < rule.min_abs_move:
        return Decision(rule.name, rule.kind, BELOW_MIN_MOVE, f"absolute move below min_abs_move {rule.min_abs_move:g}",
                        direction, change, reference)  # fmt: skip
    return Decision(rule.name, rule.kind, NOTIFY, fired, direction, change, reference)


def _fired(rule: Rule, series: Series, window: datetime) -> str | None:
    """The direction the rule fires in at ``window`` before the cooldown (None: no firing, or no record)."""
    if series.at(window) is None:
        return None
    decision = series.raw(rule, window)
    return decision.direction if decision.decision == NOTIFY else None


def evaluate(rule: Rule, series: Series, slot: datetime) -> Decision:
    """The rule's decision for the window starting at ``slot``; ``series`` must hold every record from
    ``slot - rule.history`` on (the decision depends on nothing else). A firing is then held by the cooldown
    (which counts every firing, held or sent) or by the quiet hours."""
    decision = series.raw(rule, slot)
    if decision.decision != NOTIFY:
        return decision
    if rule.cooldown_minutes:
        suppression = suppressed_by(slot, decision.direction, partial(_fired, rule, series), rule.cooldown)
        if suppression is not None:
            reason = suppression.reason(decision.direction, f"the {rule.cooldown_minutes}-minute cooldown")
            return replace(decision, decision=SUPPRESSED_COOLDOWN, reason=reason, suppressed_by=suppression)
    quiet = rule.quiet_hours
    if quiet is None or not quiet.hold(slot):
        return decision
    held = f"quiet hours {quiet} (the window starts {quiet.local(slot):%H:%M} there)"
    if quiet.unless_pct is not None and abs(decision.change_pct) > quiet.unless_pct:
        return replace(decision, reason=f"{decision.reason}; sent in {held}: |change| above {quiet.unless_pct:g}%")
    unless = "" if quiet.unless_pct is None else f", |change| <= unless_pct {quiet.unless_pct:g}%"
    return replace(decision, decision=SUPPRESSED_QUIET_HOURS, reason=f"{held}{unless}: {decision.reason}")

"""The pairs beyond the default one: one analysis for all of them, one ledger entry per (pair, window)
holding each rule's decision, and once per (pair, rule, window) by conditional ledger writes.

The default pair keeps its single-pair path (``windows.analyse_window``: today's entry bytes, claims and
params). Every other pair of the rules file goes through here, in one task of the window's run:

- its prices come from its canonical CSVs ``<slot>/<BASE>_<QUOTE>.csv``; the keys of every pair are found
  with one listing per day partition the rules look back into (StartAfter the first key), not one per pair,
  and only the CSVs a decision reads are fetched (``rules.slots_read``: the window's and one reference per
  rule without a cooldown);
- each rule decides (``rules.evaluate``); a firing rule of a window not due for subscribers (a backfill,
  an old window) is ``suppressed_backfill``;
- the entry ``<slot>/<BASE>_<QUOTE>.json`` is written with ``If-None-Match: *`` (read only when one is
  there already) / ``If-Match``: when a rule
  is due, as the claim ``publishing`` by this run, listing the due rules; only that run publishes them,
  each one marked ``publish_started`` before its Publish and ``notified`` with its message id after;
- a pair without a record of the window is *late*: no entry is written (a later run of the window, a
  clear, a backfill or the bulk DAG still can), and the run tells ops which pairs were late.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

from include.price_pipeline import alerts, layout, rules, store
from include.price_pipeline.analysis import CLAIMED, NOTIFIED, PUBLISHING, SUPPRESSED_BACKFILL, parse_canonical_csv
from include.price_pipeline.settings import Config
from include.price_pipeline.windows import PUBLISH_STARTED, AlreadyNotified, ClaimLeft, ClaimLost

log = logging.getLogger(__name__)
JSON = "application/json"
ANALYSED = "analysed"
#: Concurrent publishes of one claim (mapped tasks) rewrite the entry in turn; a lost race is read again.
MAX_WRITE_ATTEMPTS = 20


def other_pairs(rule_set: rules.Rules) -> list[str]:
    return [pair for pair in rule_set.pairs if pair != rule_set.default_pair]


def load_pair_prices(s3, config: Config, rule_set: rules.Rules, pairs: list[str], slot: datetime) -> dict:
    """``{pair: [Price, ...]}``: of each pair's canonical CSVs in its rules' look-back from ``slot``, the
    ones its decision reads (``rules.slots_read``: the window's, each rule's reference, a cooldown's
    history). One listing per day partition for all pairs together, then one GET per CSV read."""
    from concurrent.futures import ThreadPoolExecutor

    wanted = {layout.pair_slug(pair): pair for pair in pairs}
    first = slot - max(rule.history for pair in pairs for rule in rule_set.pairs[pair])
    listed: dict[str, dict[datetime, str]] = {pair: {} for pair in pairs}
    first_key = layout.analysis_key(first, config.analysis_prefix)
    last_stamp = layout.slot_stamp(slot)
    for day in layout.day_partitions(first, slot):
        day_prefix = f"{config.analysis_prefix}{day}"
        after = "" if first_key < day_prefix else first_key[:-4]  # the slot stamp itself sorts first
        for key in store.list_keys(s3, config.bucket, day_prefix, after):
            stamp, _, rest = key[len(day_prefix) :].partition("/")
            if stamp <= last_stamp and rest.endswith(".csv") and rest[:-4] in wanted:
                listed[wanted[rest[:-4]]][layout.parse_slot_stamp(stamp)] = key
    keys = [
        by_slot[read]
        for pair, by_slot in listed.items()
        for read in rules.slots_read(rule_set.pairs[pair], list(by_slot), slot)
    ]
    with ThreadPoolExecutor(store.READ_WORKERS) as pool:
        bodies = list(pool.map(lambda key: store.read_bytes(s3, config.bucket, key), keys))
    prices = {pair: [] for pair in pairs}
    for body in bodies:
        if body is not None:
            price = parse_canonical_csv(body)
            prices[price.pair].append(price)
    return prices


def analyse_pairs(s3, config: Config, rule_set: rules.Rules, slot: datetime, due: bool, why_not_due: str,
                  run_url: str, claimant: str) -> dict:  # fmt: skip
    """Decide every other pair's window, write its entry, claim its due rules (the pairs in parallel).

    Returns ``alerts`` (one per due (pair, rule): ``pair``, ``rule``, ``subject``, ``message``,
    ``attributes``), ``decisions`` (``{pair: {rule: decision}}`` or the stored entry's for a pair already
    claimed) and ``late`` (``{pair: reason}`` of pairs without a record of the window).
    """
    from concurrent.futures import ThreadPoolExecutor

    pairs = other_pairs(rule_set)
    out = {"alerts": [], "decisions": {}, "late": {}}
    if not pairs:
        return out
    prices = load_pair_prices(s3, config, rule_set, pairs, slot)

    def analyse(pair: str) -> dict:
        series = rules.Series(prices[pair])
        return _analyse_pair(s3, config, rule_set.pairs[pair], pair, series, slot, due, why_not_due, claimant)

    with ThreadPoolExecutor(store.READ_WORKERS) as pool:
        for pair, result in zip(pairs, pool.map(analyse, pairs), strict=True):
            if "late" in result:
                out["late"][pair] = result["late"]
                continue
            out["decisions"][pair] = result["decisions"]
            if result.get("claimed"):
                out["alerts"] += _alerts(result["entry"], config, run_url)
    return out


def _analyse_pair(s3, config: Config, pair_rules, pair, series, slot, due, why_not_due, claimant) -> dict:
    """One pair's window: ``{"decisions", "entry", "claimed"}`` (``claimed``: this run is to publish the
    entry's due rules) or ``{"late": reason}``. The entry is written with ``If-None-Match: *`` first (a
    window's first analysis reads nothing); only when one is there already is it read, and then a
    ``publishing`` or ``notified`` entry is kept as it is and anything else replaced ``If-Match`` its ETag."""
    key = layout.ledger_key(slot, config.changes_prefix, pair=pair)
    stamp = layout.slot_stamp(slot)
    entry = None
    if series.at(slot) is not None:
        decided = {rule.name: rules.evaluate(rule, series, slot) for rule in pair_rules}
        entry = pair_entry(pair, slot, series.at(slot), pair_rules, decided, due, why_not_due)
        if entry["decision"] == PUBLISHING:
            entry = {**entry, "claimed_by": claimant}
        try:
            store.write_if(s3, config.bucket, key, alerts.ledger_bytes(entry), JSON, None)
            return _decided(pair, stamp, entry, claimed=entry["decision"] == PUBLISHING)
        except store.ConditionFailed:
            pass  # an entry is there: what it is decides
    stored = store.read_with_etag(s3, config.bucket, key)
    existing, etag = (json.loads(stored[0]), stored[1]) if stored else (None, None)
    if existing and existing["decision"] in CLAIMED:
        ours = existing["decision"] == PUBLISHING and existing.get("claimed_by") == claimant
        if not ours:
            log.warning("%s window %s is %s by %s: this run does not publish it", pair, stamp,
                        existing["decision"], existing.get("claimed_by", "an earlier run"))  # fmt: skip
        return _decided(pair, stamp, existing, claimed=ours)  # ours: an earlier try of this run claimed it
    if entry is None:
        return {"late": _missing_reason(s3, config, slot, pair)}
    if etag is not None and etag == store.md5(alerts.ledger_bytes(entry)):
        return _decided(pair, stamp, entry, claimed=False)
    try:
        store.write_if(s3, config.bucket, key, alerts.ledger_bytes(entry), JSON, etag)
    except store.ConditionFailed:
        word = "claimed by another run" if entry["decision"] == PUBLISHING else "changed"
        log.warning("%s window %s: the entry %s meanwhile; kept it", pair, stamp, word)
        return _decided(pair, stamp, entry, claimed=False)
    return _decided(pair, stamp, entry, claimed=entry["decision"] == PUBLISHING)


def _decided(pair: str, stamp: str, entry: dict, claimed: bool) -> dict:
    decisions = {name: r["decision"] for name, r in entry["rules"].items()}
    log.info("%s window %s: %s", pair, stamp, decisions)
    return {"decisions": decisions, "entry": entry, "claimed": claimed}


def pair_entry(pair, slot, latest, pair_rules, decided, due, why_not_due) -> dict:
    """The deterministic ledger entry of one pair's window: each rule's decision; ``publishing`` when a
    rule is due (the caller adds ``claimed_by``), else ``analysed``."""
    rule_entries = {}
    for rule in pair_rules:
        decision = decided[rule.name]
        verdict, reason = decision.decision, decision.reason
        if verdict == rules.NOTIFY and not due:
            verdict, reason = SUPPRESSED_BACKFILL, why_not_due
        rule_entries[rule.name] = {
            "kind": rule.kind,
            "decision": verdict,
            "reason": reason,
            "direction": decision.direction,
            "change_pct": alerts._finite(decision.change_pct),
            "reference": alerts._price(decision.reference),
            "threshold_pct": rule.threshold_pct if rule.kind == rules.CHANGE else None,
            "minutes": rule.minutes if rule.kind == rules.CHANGE else 5,
            "level": rule.level if rule.kind == rules.CROSSING else None,
            "sns_message_id": None,
        }
    due_rules = any(r["decision"] == rules.NOTIFY for r in rule_entries.values())
    return {
        "window_start": alerts.iso(slot),
        "window_end": alerts.iso(slot + layout.SLOT),
        "pair": pair,
        "latest": alerts._price(latest),
        "rules": rule_entries,
        "decision": PUBLISHING if due_rules else ANALYSED,
    }


def _alerts(entry: dict, config: Config, run_url: str) -> list[dict]:
    """The alert of each rule the entry has due (``notify``), for the publish task."""
    out = []
    for name, rule in entry["rules"].items():
        if rule["decision"] != rules.NOTIFY:
            continue
        pair, latest = entry["pair"], entry["latest"]["weighted_average"]
        what = (
            f"{rule['direction']} {alerts._number(abs(rule['change_pct'])):.2f}% in {rule['minutes']} min"
            if rule["kind"] == rules.CHANGE
            else f"crossed {rule['level']:g} {rule['direction']}ward"
        )
        subject = alerts.check_subject(f"{pair} {what}: {alerts.format_price(latest)}"[:99])
        message = "\n".join(
            [
                f"{pair} weighted average moved {alerts._number(rule['change_pct']):+.2f}% "
                f"(rule {name}: {rule['reason']}).",
                "",
                f"Reference: {alerts.format_price(rule['reference']['weighted_average'])} at "
                f"{rule['reference']['timestamp']}",
                f"Latest:    {alerts.format_price(latest)} at {entry['latest']['timestamp']}",
                f"Window:    {entry['window_start']} to {entry['window_end']} (UTC)",
                "",
                f"Airflow run: {run_url}",
            ]
        )
        attributes = {
            "symbol": pair,
            "rule": name,
            "direction": rule["direction"],
            "change_pct": round(alerts._number(rule["change_pct"]), 4),
        }
        out.append({"pair": pair, "rule": name, "subject": subject, "message": message, "attributes": attributes})
    return out


def _missing_reason(s3, config: Config, slot: datetime, pair: str) -> str:
    reasons = [
        note
        for note in store.quarantine_reasons(s3, config.bucket, config.quarantine_prefix, slot)
        if note.get("pair") == pair
    ]
    if reasons:
        return f"quarantined: {reasons[0]['reason']} (object {reasons[0]['source_key']})"
    return "no record of the window when it was analysed"


def late_notice(slot: datetime, late: dict, run_url: str) -> str:
    """The ops message naming the pairs whose record was missing when the window was analysed."""
    lines = [f"Window {layout.slot_stamp(slot)} was analysed without these pairs:"]
    lines += [f"- {pair}: {reason}" for pair, reason in sorted(late.items())]
    lines += [
        "",
        "Their windows have no ledger entry yet: clearing this run once the record is there (or a backfill,",
        f"or the price_history_backfill DAG) analyses them. Run: {run_url}",
    ]
    return "\n".join(lines)


def _rewrite(s3, config: Config, slot: datetime, pair: str, change) -> dict:
    """Apply ``change(entry) -> new entry`` over the version read, again when a concurrent publish of the
    same claim (another mapped task) wrote in between; ``change`` raises to stop."""
    key = layout.ledger_key(slot, config.changes_prefix, pair=pair)
    for _ in range(MAX_WRITE_ATTEMPTS):
        stored = store.read_with_etag(s3, config.bucket, key)
        entry, etag = (json.loads(stored[0]), stored[1]) if stored else (None, None)
        updated = change(entry)
        try:
            store.write_if(s3, config.bucket, key, alerts.ledger_bytes(updated), JSON, etag)
            return updated
        except store.ConditionFailed:
            continue
    raise ClaimLost(f"{pair} window {layout.slot_stamp(slot)}: the entry kept changing; not publishing")


def start_publish(s3, config: Config, slot: datetime, pair: str, rule: str, claimant: str) -> None:
    """Right before publishing (pair, rule): only ``claimant``'s claim, only once: marks the rule
    ``publish_started``. AlreadyNotified, ClaimLost (not this run's claim) or ClaimLeft (an earlier try
    started publishing this rule and did not record the outcome: ops decide)."""
    stamp = f"{pair} window {layout.slot_stamp(slot)} rule {rule}"

    def mark(entry):
        state = (entry or {}).get("rules", {}).get(rule, {})
        if state.get("decision") == NOTIFIED:
            raise AlreadyNotified(f"{stamp} already notified as SNS message {state['sns_message_id']}")
        if not state or entry.get("claimed_by") != claimant:
            raise ClaimLost(f"{stamp} is not claimed by this run: not publishing")
        if state.get(PUBLISH_STARTED):
            raise ClaimLeft(
                f"{stamp}: claim left by an earlier publish of {claimant}, which may have sent the alert; "
                "not publishing again. Check the alert topic; to release the claim see README (releasing a claim)"
            )
        return {**entry, "rules": {**entry["rules"], rule: {**state, PUBLISH_STARTED: True}}}

    _rewrite(s3, config, slot, pair, mark)


def record_notified(s3, config: Config, slot: datetime, pair: str, rule: str, message_id: str, claimant: str) -> dict:
    """The rule as ``notified`` with its message id; once every due rule is, the entry is ``notified``."""

    def mark(entry):
        if not entry or entry.get("claimed_by") != claimant:
            raise ClaimLost(f"{pair} window {layout.slot_stamp(slot)} rule {rule}: published as {message_id}, "
                            "but the claim is gone")  # fmt: skip
        state = {k: v for k, v in entry["rules"][rule].items() if k != PUBLISH_STARTED}
        state = {**state, "decision": NOTIFIED, "sns_message_id": message_id}
        updated = {**entry, "rules": {**entry["rules"], rule: state}}
        if not any(r["decision"] == rules.NOTIFY for r in updated["rules"].values()):
            updated = {k: v for k, v in updated.items() if k != "claimed_by"} | {"decision": NOTIFIED}
        return updated

    return _rewrite(s3, config, slot, pair, mark)

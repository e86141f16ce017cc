"""The ledger: every pair's decision of a window, its claim and its publish, once per (pair, rule, window);
README "Alerts, ledger and at-most-once" explains the claim and the publish. A pair without a record of the
window is *late*: no line is written, and the run tells ops why.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from botocore.exceptions import ClientError

from include.price_pipeline import alerts, layout, quarantine, rules, store, windows
from include.price_pipeline.analysis import (
    CLAIMED,
    INVALID_CHANGE,
    NOTIFIED,
    PUBLISHING,
    apply_freshness,
    suppressed_for_lateness,
)
from include.price_pipeline.settings import Config

log = logging.getLogger(__name__)
ANALYSED = "analysed"
#: Marks a due rule whose publish has begun: from then on nobody publishes it again (at most once).
PUBLISH_STARTED = "publish_started"
#: Alerts published at once: each batch is marked started in one write, published in parallel, and
#: recorded in one more write, so a crash leaves at most this many alerts for ops to check.
PUBLISH_BATCH = 8
#: How long after its mark a try may still record an alert it marked: another try of the run finding the
#: mark waits until then for its outcome (a zombie and its retry, or a retry started while the first try is
#: still publishing), and only then calls the claim left.
OTHER_TRY_WAIT_SECONDS = 60.0
#: When a rule's mark was written (the marking try's clock): how long ago another try began publishing it.
STARTED_AT = "publish_started_at"
#: Why an alert whose publish started is not published again.
LEFT = (
    "a publish started and did not record its outcome, it may have been sent: not publishing again. "
    "Check the alert topic; to release the claim see README (releasing a claim)"
)


def entries_bytes(entries: dict[str, dict]) -> bytes:
    """A window's ledger object: one canonical line per entry, by pair."""
    return b"".join(alerts.ledger_bytes(entries[pair]) for pair in sorted(entries))


SEE_README = "README: Alerts, ledger and at-most-once"


class DamagedLedger(ValueError):
    """A window's ledger object that is not what :func:`entries_bytes` writes."""


def parse_entries(body: bytes, key: str = "the window's ledger object") -> dict[str, dict]:
    """``{pair: entry}`` of a window's ledger object: the one reader of the pipeline and the page. Anything but
    entries as :func:`pair_entry` writes them, each pair once, raises DamagedLedger naming ``key`` and the line:
    no reader guesses which of two lines of a pair holds, and no claim is left half-updated."""
    entries = {}
    for number, line in enumerate(body.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        problem = _damage(entry) or (entry["pair"] in entries and f"pair {alerts.quoted(entry['pair'])} listed twice")
        if problem:
            raise DamagedLedger(f"{key} line {number}: {problem}; fix or delete the object ({SEE_README})")
        entries[entry["pair"]] = entry
    return entries


def _damage(entry) -> str | None:
    """What is wrong with a parsed ledger line (None: an entry as pair_entry writes it). A due rule must hold
    what its alert says (a claimed line missing its reference failed the publish with a KeyError after other
    pairs' claims were written), and a claimed line a due rule (one with none claimed nothing to publish)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("pair"), str):
        return "not a JSON object with a pair"
    pair, decided = alerts.quoted(entry["pair"]), entry.get("rules")
    if (
        entry.get("decision") not in (ANALYSED, PUBLISHING, NOTIFIED)
        or not isinstance(decided, dict)
        or not decided
        or not all(isinstance(rule, dict) and isinstance(rule.get("decision"), str) for rule in decided.values())
    ):
        return f"pair {pair}: not an entry with a decision and each rule's"
    due = [name for name, rule in decided.items() if rule["decision"] == rules.NOTIFY]
    if entry["decision"] == PUBLISHING and not due:
        return f"pair {pair}: claimed without a due rule"
    for name in due:
        try:
            due_alerts({**entry, "rules": {name: decided[name]}}, "")
        except alerts.UnsafeText:
            pass  # what the alert would say is refused when it is made, with its own reason
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            return f"pair {pair}: due rule {alerts.quoted(name)} lacks what its alert says ({type(error).__name__})"
    return None


def analyse_pairs(s3, config: Config, rule_set: rules.Rules, slot: datetime, due: bool, why_not_due: str,
                  run_url: str, claimant: str,
                  still_normalizing: windows.StillNormalizing | None = None) -> dict:  # fmt: skip
    """Decide every pair's window (``rule_set``: the run's rules), write the window's entries, claim its due
    rules; earlier windows the rules may look at must be settled (``windows.wait_for_earlier_windows``).
    Returns ``alerts`` (one per due (pair, rule)), ``decisions`` (``{pair: {rule: decision}}``), ``late``
    (``{pair: reason}``) and ``ops_notice`` (or None). WindowFailed when no pair has a record."""
    pairs = list(rule_set.pairs)
    out = {"alerts": [], "decisions": {}, "late": {}, "ops_notice": None}
    stamp = layout.slot_stamp(slot)
    first = slot - rule_set.history()
    listed = store.csv_keys(s3, config.bucket, config.analysis_prefix, first, slot)
    gaps = [earlier for earlier in layout.slots_between(first, slot)
            if layout.analysis_key(earlier, config.analysis_prefix) not in listed]  # fmt: skip
    windows.wait_for_earlier_windows(s3, config, slot, gaps, still_normalizing)
    unreadable: dict[str, str] = {}  # a CSV that is not canonical holds no record; ops hear which
    prices = store.load_rule_prices(s3, config.bucket, config.analysis_prefix, rule_set, pairs, slot, listed,
                                    unreadable)  # fmt: skip
    fresh = {}
    for pair in pairs:
        series = rules.Series(prices[pair])
        latest = series.at(slot)
        if latest is None:
            continue
        if latest.superseded:
            log.warning("%s window %s: used %s; superseded older objects: %s", pair, stamp, latest.source_key,
                        ", ".join(latest.superseded))  # fmt: skip
        fresh[pair] = decide(pair, rule_set.pairs[pair], series, slot, due, why_not_due, claimant)

    entries = _rewrite(s3, config, slot, lambda stored: merged(stored, fresh))
    late = [p for p in pairs if p not in entries or (p not in fresh and entries[p]["decision"] not in CLAIMED)]
    out["late"] = _missing_reasons(s3, config, rule_set, slot, late, unreadable)
    if len(out["late"]) == len(pairs):
        reasons = "; ".join(f"{pair}: {reason}" for pair, reason in sorted(out["late"].items()))
        raise windows.WindowFailed(f"window {stamp}: no pair has a record to decide ({reasons})")
    for pair in pairs:
        entry = entries.get(pair)
        if pair in out["late"]:
            continue
        out["decisions"][pair] = {name: r["decision"] for name, r in entry["rules"].items()}
        ours = entry["decision"] == PUBLISHING and entry.get("claimed_by") == claimant
        if entry is not fresh.get(pair) and not ours and entry["decision"] in CLAIMED:
            log.warning("%s window %s is %s by %s: this run does not publish it", pair, stamp, entry["decision"],
                        entry.get("claimed_by", "an earlier run"))  # fmt: skip
        if ours:
            out["alerts"] += due_alerts(entry, run_url)
    decided = [(pair, name, rule) for pair, entry in sorted(entries.items()) if entry is fresh.get(pair)
               for name, rule in entry["rules"].items()]  # fmt: skip
    breaches = [f"- {pair} rule {name}: {alerts._number(rule['change_pct']):+.2f}% ({rule['kind']})"
                for pair, name, rule in decided
                if suppressed_for_lateness(rule["decision"], rule["reason"])]  # fmt: skip
    refused = [f"- {pair} rule {name}: {rule['reason']}" for pair, name, rule in decided
               if rule["decision"] == INVALID_CHANGE]  # fmt: skip
    notice = [f"Breaches of window {stamp} not sent: {why_not_due} when their records were analysed:", *breaches]
    notice = (notice if breaches else []) + ([f"Changes of window {stamp} refused:", *refused] if refused else [])
    notice += [f"Canonical CSVs not read: {alerts.quoted(key)}: {why}" for key, why in sorted(unreadable.items())]
    out["ops_notice"] = "\n".join([*notice, f"Run: {run_url}"]) if notice else None
    log.info("Window %s: %s", stamp, out["decisions"])
    return out


def merged(stored: dict[str, dict], fresh: dict[str, dict]) -> dict[str, dict]:
    """A window's entries after an analysis: each pair's ``publishing`` or ``notified`` entry as stored
    (nobody overwrites a claim), else the fresh one, else the stored one (a pair without a record now)."""
    keep = {pair: entry for pair, entry in stored.items() if entry["decision"] in CLAIMED or pair not in fresh}
    return {pair: keep.get(pair) or fresh[pair] for pair in sorted(set(stored) | set(fresh))}


def _rewrite(s3, config: Config, slot: datetime, change: Callable[[dict], dict], read_first: bool = False) -> dict:
    """Apply ``change({pair: entry}) -> {pair: entry}`` to the window's ledger object (``store.update``: over
    the version read, again when another writer came in between; created unread unless ``read_first``) and
    return what it holds. An unchanged object, or one with no entry at all, is not written."""
    key = layout.pairs_ledger_key(slot, config.changes_prefix)

    last = {}  # the entries of the last change asked for: what the object holds once update returns

    def changed(body: bytes | None) -> bytes | None:
        last["entries"] = change(parse_entries(body, key) if body else {})
        return entries_bytes(last["entries"]) or None

    store.update(s3, config.bucket, key, changed, store.NDJSON, read_first)
    return last["entries"]


def decide(pair, pair_rules, series: rules.Series, slot, due, why_not_due, claimant: str) -> dict:
    """The entry of ``pair``'s window ``slot`` (its record in ``series``): each rule decided by one engine
    (``rules.evaluate``), ``publishing`` and claimed by ``claimant`` when a rule is due. The one decision of
    a window, the live lane's and the bulk's."""
    decided = {rule.name: rules.evaluate(rule, series, slot) for rule in pair_rules}
    entry = pair_entry(pair, slot, series.at(slot), pair_rules, decided, due, why_not_due)
    return {**entry, "claimed_by": claimant} if entry["decision"] == PUBLISHING else entry


def pair_entry(pair, slot, latest, pair_rules, decided, due, why_not_due) -> dict:
    """The deterministic ledger entry of one pair's window: each rule's decision; ``publishing`` when a
    rule is due (the caller adds ``claimed_by``), else ``analysed``."""
    rule_entries = {}
    for rule in pair_rules:
        decision = decided[rule.name]
        verdict, reason = apply_freshness(decision.decision, decision.reason, due, why_not_due)
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
        } | alerts.suppressed(decision.suppressed_by)
    due_rules = any(r["decision"] == rules.NOTIFY for r in rule_entries.values())
    return {
        "window_start": layout.iso(slot),
        "window_end": layout.iso(slot + layout.SLOT),
        "pair": pair,
        "latest": alerts._price(latest),
        "rules": rule_entries,
        "decision": PUBLISHING if due_rules else ANALYSED,
    }


def due_alerts(entry: dict, run_url: str) -> list[dict]:
    """The alert of each rule the entry has due (``notify``), for the publish task."""
    window = {field: entry[field] for field in ("latest", "window_start", "window_end")}
    return [
        alerts.alert(entry["pair"], name, rule | window, run_url)
        for name, rule in entry["rules"].items()
        if rule["decision"] == rules.NOTIFY
    ]


def _missing_reasons(s3, config: Config, rule_set, slot: datetime, late: list[str], unreadable: dict) -> dict:
    """Why each of the ``late`` pairs has no record of the window: its quarantine reason, if the Glue job
    left one (``quarantine.notes``: one listing of the window's quarantine folder for all of them), its
    canonical CSV that is not canonical, else that none was there."""
    first = {}
    for note in quarantine.notes(s3, config, rule_set, slot, slot + layout.SLOT) if late else ():
        first.setdefault(note["pair"], note)
    key, out = layout.analysis_key(slot, config.analysis_prefix), {}
    for pair in late:
        note = first.get(pair)
        out[pair] = (
            f"quarantined: {alerts.quoted(note['reason'])} (object {alerts.quoted(note['source_key'])})" if note
            else f"canonical CSV {alerts.quoted(key)} not read: {unreadable[key]}" if key in unreadable
            else "no record of the window when it was analysed"
        )  # fmt: skip
    return out


def late_note(run_url: str) -> str:
    """What the ops message opening late pairs' incidents says to do of them."""
    return ("Their windows have no ledger entry yet: clearing this run once the record is there (or a backfill,\n"
            f"or the price_history_backfill DAG) analyses them. Run: {run_url}")  # fmt: skip


def publish_alerts(s3, config: Config, slot: datetime, due: list[dict], claimant: str,
                   publish: Callable[[dict], str], other_try_wait: float = OTHER_TRY_WAIT_SECONDS) -> dict:  # fmt: skip
    """Publish each due alert (``analyse_pairs``'s) of ``claimant``'s claims once; ``publish(alert)`` returns
    the SNS message id. In batches of PUBLISH_BATCH: one write marks the rules ``publish_started``, they are
    published in parallel, one write records each ``notified``. A Publish SNS refused gets its mark back, for a
    retry; any other failure may have sent it and keeps the mark. A mark an overlapping try of the same run
    made while this one was marking is waited for up to ``other_try_wait`` seconds, not called left.

    Returns ``sent`` (``{"<pair> <rule>": message id}``), ``skipped``, ``left`` (may have been sent: ops
    decide) and ``failed`` (not sent: a retry publishes them), each with its reasons.
    """
    out = {"sent": {}, "skipped": [], "left": [], "failed": []}
    stamp = layout.slot_stamp(slot)
    seen_unmarked: set[tuple[str, str]] = set()
    other_try: list[dict] = []  # alerts an overlapping try marked: asked about once this try published its own
    for first in range(0, len(due), PUBLISH_BATCH):
        batch, verdicts = due[first : first + PUBLISH_BATCH], {}

        def start(entries, batch=batch, verdicts=verdicts):
            verdicts.clear()
            marked = dict(entries)
            for alert in batch:
                pair, rule = alert["pair"], alert["rule"]
                entry = marked.get(pair) or {}
                state = entry.get("rules", {}).get(rule, {})
                what = f"{pair} window {stamp} rule {rule}"
                if state.get("decision") == NOTIFIED:
                    verdicts[pair, rule] = (
                        "skipped",
                        f"{what} already notified as SNS message {state['sns_message_id']}",
                    )
                elif entry.get("decision") != PUBLISHING or entry.get("claimed_by") != claimant:
                    verdicts[pair, rule] = ("skipped", f"{what} is not claimed by this run: not publishing")
                elif state.get(PUBLISH_STARTED) and ((pair, rule) in seen_unmarked or _alive(state, other_try_wait)):
                    verdicts[pair, rule] = ("other_try", what)
                elif state.get(PUBLISH_STARTED):
                    verdicts[pair, rule] = ("left", f"{what}: {LEFT} (an earlier publish of {claimant})")
                else:
                    seen_unmarked.add((pair, rule))
                    verdicts[pair, rule] = ("go", what)
                    mark = {PUBLISH_STARTED: True, STARTED_AT: layout.iso(_now())}
                    marked[pair] = {**entry, "rules": {**entry["rules"], rule: {**state, **mark}}}
            return marked

        _rewrite(s3, config, slot, start, read_first=True)
        go = [alert for alert in batch if verdicts[alert["pair"], alert["rule"]][0] == "go"]
        other_try += [alert for alert in batch if verdicts[alert["pair"], alert["rule"]][0] == "other_try"]
        for verdict, reason in verdicts.values():
            if verdict not in ("go", "other_try"):
                out[verdict].append(reason)
        with ThreadPoolExecutor(PUBLISH_BATCH) as pool:
            results = list(pool.map(lambda alert: _attempt(publish, alert), go))
        if go:
            _rewrite(s3, config, slot, lambda entries, go=go, results=results: _recorded(entries, go, results), True)
        for alert, (message_id, error) in zip(go, results, strict=True):
            what = f"{alert['pair']} window {stamp} rule {alert['rule']}"
            if message_id is not None:
                out["sent"][f"{alert['pair']} {alert['rule']}"] = message_id
            elif isinstance(error, ClientError):
                out["failed"].append(f"{what}: SNS refused the Publish ({error}); a retry publishes it")
            else:
                out["left"].append(f"{what}: {LEFT} (the Publish failed: {type(error).__name__}: {error})")
    for verdict, reason in _outcome_of_other_try(s3, config, slot, other_try, other_try_wait):
        out[verdict].append(reason)
    return out


def _now() -> datetime:
    return datetime.now(UTC)


def _started_at(state: dict) -> datetime | None:
    try:
        return layout.parse_iso(state[STARTED_AT])
    except (KeyError, TypeError, ValueError):
        return None  # a mark of before STARTED_AT, or damaged: nobody can say it is still alive


def _alive(state: dict, wait: float) -> bool:
    """Whether the try that marked the rule may still record it: marked less than ``wait`` seconds ago."""
    started = _started_at(state)
    return started is not None and _now() - started < timedelta(seconds=wait)


def _outcome_of_other_try(s3, config: Config, slot: datetime, alerts_: list[dict], wait: float) -> list[tuple]:
    """(verdict, reason) of each alert another try of this run marked: ``skipped`` once it recorded the alert
    notified, ``failed`` when SNS refused it (its mark taken back: a retry publishes it), ``left`` when it has
    still not said ``wait`` seconds after its mark (it may have died after the Publish: ops decide)."""
    stamp, begun, pending, out = layout.slot_stamp(slot), _now(), list(alerts_), []
    key = layout.pairs_ledger_key(slot, config.changes_prefix)
    while pending:
        current = store.read_with_etag(s3, config.bucket, key)
        entries = parse_entries(current[0], key) if current else {}
        for alert in list(pending):
            state = entries.get(alert["pair"], {}).get("rules", {}).get(alert["rule"], {})
            what = f"{alert['pair']} window {stamp} rule {alert['rule']}"
            if state.get("decision") == NOTIFIED:
                out.append(("skipped", f"{what}: another try of this run published it (SNS message "
                                       f"{state['sns_message_id']}), not this one"))  # fmt: skip
            elif not state.get(PUBLISH_STARTED):
                out.append(("failed", f"{what}: another try of this run did not publish it; a retry publishes it"))
            elif _now() >= (_started_at(state) or begun) + timedelta(seconds=wait):
                out.append(("left", f"{what}: {LEFT} (another try of this run started it {wait:.0f} s ago or more)"))
            else:
                continue
            pending.remove(alert)
        if pending:
            time.sleep(min(1.0, wait / 10))
    return out


def _attempt(publish: Callable[[dict], str], alert: dict) -> tuple[str | None, Exception | None]:
    try:
        return publish(alert), None
    except Exception as error:  # noqa: BLE001 - recorded per alert, reported by the caller
        return None, error


def _recorded(entries: dict[str, dict], go: list[dict], results: list[tuple]) -> dict[str, dict]:
    """The entries with each published rule ``notified`` (its message id), each refused one's mark taken
    back; an entry whose rules are all notified is ``notified`` and no longer claimed."""
    updated = dict(entries)
    for alert, (message_id, error) in zip(go, results, strict=True):
        entry = updated[alert["pair"]]
        state = entry["rules"][alert["rule"]]
        if message_id is not None:
            state = {k: v for k, v in state.items() if k not in (PUBLISH_STARTED, STARTED_AT)} | {
                "decision": NOTIFIED,
                "sns_message_id": message_id,
            }
        elif isinstance(error, ClientError):
            state = {k: v for k, v in state.items() if k not in (PUBLISH_STARTED, STARTED_AT)}
        entry = {**entry, "rules": {**entry["rules"], alert["rule"]: state}}
        if not any(r["decision"] == rules.NOTIFY for r in entry["rules"].values()):
            entry = {k: v for k, v in entry.items() if k != "claimed_by"} | {"decision": NOTIFIED}
        updated[alert["pair"]] = entry
    return updated

"""Task bodies of the price-notification DAG as plain functions (S3 through a boto3 client).

Once per window is enforced by conditional ledger writes, not by a read before a write: every ledger
write goes over exactly the version read (S3 If-Match on its ETag, or If-None-Match: * to create). A
breach is first *claimed*: its entry is written as ``publishing`` with the claimant's run, and only the
run whose claim landed publishes, then replaces its own claim with ``notified`` (If-Match on the claim).
Nobody overwrites a ``publishing`` or ``notified`` entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from botocore.exceptions import ClientError

from include.price_pipeline import alerts, layout, rules, store
from include.price_pipeline.analysis import (
    CLAIMED,
    INVALID_CHANGE,
    NOTIFIED,
    NOTIFY,
    PUBLISHING,
    apply_freshness,
    suppressed_for_lateness,
)
from include.price_pipeline.settings import Config

log = logging.getLogger(__name__)
#: What a run that did not publish a window says it found (its decision in XCom, never in the ledger).
CLAIMED_ELSEWHERE = "claimed_elsewhere"
#: Marks a claim whose publish has begun: from then on nobody publishes it again (at most once).
PUBLISH_STARTED = "publish_started"


#: ``still_normalizing(windows)``: those of ``windows`` whose normalization a run can still finish.
StillNormalizing = Callable[[list[datetime]], list[datetime]]


class WindowFailed(Exception):
    """The window cannot be analysed and a retry will not change that (the message says why)."""


class RecordMissing(WindowFailed):
    """The window has no record of the default pair (none landed by the sensor's deadline, or the one
    there held no record of this slot): the pair is late for the window."""


class WindowNotReady(Exception):
    """An earlier window this one is compared with has a raw record whose normalization is still
    under way (a parallel backfill, a slow or retried Glue run): analysing now would compare with an
    older price. Try again shortly (the message names the windows, ``windows`` lists them)."""

    def __init__(self, slot: datetime, waiting: list[datetime]):
        self.windows = waiting
        stamps = ", ".join(layout.slot_stamp(s) for s in waiting)
        super().__init__(f"window {layout.slot_stamp(slot)} waits for the normalization of {stamps}")


class AlreadyNotified(Exception):
    """The window's alert was sent (its ledger entry is notified): nothing to do."""


class ClaimLost(Exception):
    """Another run holds (or released) the window's claim: this one must not publish."""


class ClaimLeft(Exception):
    """This run's claim is still ``publishing`` on a retry: an earlier try may have published. Not sent
    again (at most once); ops decide (README: releasing a claim)."""


def run_window_start(data_interval_start: datetime | None, run_after: datetime) -> datetime:
    """The window a run analyses: its data interval, or for a run without a logical date (REST or CLI
    trigger with none) the latest window complete when it was due to run. A plain ``datetime``: Airflow's
    pendulum times make intervals that a ``timedelta`` cannot divide (a cooldown's checkpoint does)."""
    if data_interval_start is not None:
        return layout.slot_start(data_interval_start)
    return layout.slot_start(run_after) - layout.SLOT


def looks_once(run_type: str, window_end: datetime, now: datetime, sensor_timeout_seconds: float) -> str | None:
    """Why the run of a window whose record should already be there looks for it once instead of waiting
    (a backfill run, or a window that ended longer ago than the sensor timeout); None for a live window,
    whose run waits for its record up to the sensor timeout."""
    if run_type == "backfill":
        return "a backfill run"
    if now - window_end > timedelta(seconds=sensor_timeout_seconds):
        return f"the window ended more than the sensor timeout ({sensor_timeout_seconds:g} s) ago"
    return None


def read_entry(s3, config: Config, slot: datetime) -> tuple[dict | None, str | None]:
    """(ledger entry, its ETag) of the window, or (None, None)."""
    import json

    stored = store.read_with_etag(s3, config.bucket, layout.ledger_key(slot, config.changes_prefix))
    return (None, None) if stored is None else (json.loads(stored[0]), stored[1])


def analyse_window(
    s3,
    config: Config,
    slot: datetime,
    rule_set: rules.Rules,
    due: bool,
    why_not_due: str,
    run_url: str,
    still_normalizing: StillNormalizing | None = None,
    claimant: str = "",
) -> dict:
    """Decide the default pair's window by its rule (``rule_set.default_rule``: the run's, its params
    applied), record the decision, claim a due alert.

    Returns ``decision``, the ledger ``entry``, and for a due alert (``decision = notify``, once this
    run's ``publishing`` claim landed) the alert (``alerts.default_alert``: ``pair``, ``rule``, ``subject``,
    ``message``, ``attributes``; a retried analysis keeps its own claim); ``ops_notice`` holds a line for
    the ops topic when a breach was suppressed only for lateness. A window already ``notified``, or
    claimed by another run (``claimant`` names this one: ``<dag_id>/<run_id>``), comes back as ``notified``
    / ``claimed_elsewhere`` with the
    stored entry, and nothing is written.

    Every earlier window the rule may look at (``rule.history``) must be settled: see
    :func:`wait_for_earlier_windows`. Without ``still_normalizing`` the window is analysed with the CSVs
    there are. Of those, only the ones the decision reads are fetched (``rules.slots_read``).
    """
    stamp = layout.slot_stamp(slot)
    existing, etag = read_entry(s3, config, slot)
    if existing and existing["decision"] in CLAIMED:
        if existing["decision"] == PUBLISHING and claimant and existing.get("claimed_by") == claimant:
            log.info("Window %s: this run claimed it in an earlier try; keeping the claim", stamp)
            return _due(existing, config, rule_set.default_rule.name, run_url)
        return _not_ours(existing, stamp)

    rule = rule_set.default_rule
    first = slot - rule.history
    keys = store.analysis_keys_between(s3, config.bucket, config.analysis_prefix, first, slot)
    files = [layout.slot_of_key(key) for key in keys]
    if slot not in files:
        raise _missing_record(s3, config, slot)
    listed = set(files)
    gaps = [earlier for earlier in layout.slots_between(first, slot) if earlier not in listed]
    wait_for_earlier_windows(s3, config, slot, gaps, still_normalizing)
    try:
        prices = store.load_rule_prices(s3, config.bucket, layout.analysis_key, config.analysis_prefix,
                                        rule_set, [config.pair], slot, files)[config.pair]  # fmt: skip
    except ValueError as error:
        raise WindowFailed(f"window {stamp}: {error}") from None
    series = rules.Series(prices)
    latest = series.at(slot)
    if latest is None:
        raise _missing_record(s3, config, slot)
    if latest.superseded:
        log.warning("Window %s: used %s; superseded older objects: %s", stamp, latest.source_key,
                    ", ".join(latest.superseded))  # fmt: skip
    decided = rules.evaluate(rule, series, slot)
    decision, reason = apply_freshness(decided.decision, decided.reason, due, why_not_due)
    log.info("Window %s: %s (%s)", stamp, decision, reason)
    entry = alerts.ledger_entry(latest, rule, decided, decision, reason)
    if decision == NOTIFY:
        try:
            claim(s3, config, entry, etag, claimant)
        except store.ConditionFailed:
            stored, _ = read_entry(s3, config, slot)
            return _not_ours(stored or {"decision": "(deleted)"}, stamp)
        return _due(entry, config, rule.name, run_url)
    stored = _settle(s3, config, slot, entry, etag)
    if decision == INVALID_CHANGE:
        raise WindowFailed(f"window {stamp}: {reason}")
    ops_notice = None
    if suppressed_for_lateness(decision, reason) and stored is entry:
        ops_notice = (
            f"Breach of window {stamp} not sent: {reason} when its record was analysed "
            f"(change {entry['change_pct']:+.2f}%, threshold {rule.threshold_pct}%). Run: {run_url}"
        )
    return {"decision": stored["decision"], "entry": stored, "ops_notice": ops_notice}


def _not_ours(existing: dict, stamp: str) -> dict:
    """The window's alert belongs to another run (or was sent): say so in the log, change nothing."""
    if existing.get("decision") == NOTIFIED:
        log.info("Window %s was already notified (message %s): not again", stamp, existing.get("sns_message_id"))
        return {"decision": NOTIFIED, "entry": existing}
    log.warning(
        "Window %s is claimed for publishing by %s (ledger: %s): this run does not publish it. If that run "
        "is no longer running, its claim was left by a crash (README: releasing a claim)",
        stamp,
        existing.get("claimed_by", "another run"),
        existing.get("decision"),
    )
    return {"decision": CLAIMED_ELSEWHERE, "entry": existing}


def _due(claimed: dict, config: Config, rule: str, run_url: str) -> dict:
    """What the publish task needs: the entry as decided (notify), this run's claim and the alert text."""
    entry = {k: v for k, v in claimed.items() if k not in ("claimed_by", PUBLISH_STARTED)} | {"decision": NOTIFY}
    return {"decision": NOTIFY, "entry": entry, **alerts.default_alert(entry, config.pair, rule, run_url)}


def _settle(s3, config: Config, slot: datetime, entry: dict, etag: str | None) -> dict:
    """Write a decision that is not an alert over the version read; return the entry the ledger holds.

    A run that loses (someone wrote the entry since it was read) keeps the other's entry and logs it.
    """
    body = alerts.ledger_bytes(entry)
    key = layout.ledger_key(slot, config.changes_prefix)
    if etag is not None and etag == store.md5(body):
        return entry
    try:
        store.write_if(s3, config.bucket, key, body, store.JSON, etag)
        return entry
    except store.ConditionFailed:
        stored, _ = read_entry(s3, config, slot)
        log.warning(
            "Window %s: the ledger entry changed while this run analysed it (now %s); kept it, did not write %s",
            layout.slot_stamp(slot),
            (stored or {}).get("decision"),
            entry["decision"],
        )
        return stored or entry


def claim(s3, config: Config, entry: dict, etag: str | None, claimant: str, started: bool = False) -> str:
    """Write the window's entry as ``publishing`` by ``claimant`` over the version read (``etag``, None
    when there was none); return the claim's ETag. ConditionFailed: another writer came first.
    ``started`` marks the claim as being published right away (the bulk DAG publishes in the same try)."""
    slot = datetime.fromisoformat(entry["window_start"].replace("Z", "+00:00"))
    claimed = {**entry, "decision": PUBLISHING, "claimed_by": claimant} | ({PUBLISH_STARTED: True} if started else {})
    key = layout.ledger_key(slot, config.changes_prefix)
    return store.write_if(s3, config.bucket, key, alerts.ledger_bytes(claimed), store.JSON, etag)


def start_publish(s3, config: Config, slot: datetime, claimant: str) -> tuple[dict, str]:
    """Right before publishing: return only if ``claimant``'s claim is the window's entry and no earlier
    try has started publishing it; mark the claim as started first (a conditional write). Returns the claim
    as it was before the mark and the marked claim's ETag (to take the mark back over exactly that version).

    Raises AlreadyNotified, ClaimLost (another run's claim, or none) or ClaimLeft (a publish of this claim
    started before and never recorded its outcome: it may have been sent, so ops decide).
    """
    entry, etag = read_entry(s3, config, slot)
    stamp = layout.slot_stamp(slot)
    if entry and entry["decision"] == NOTIFIED:
        raise AlreadyNotified(f"window already notified as SNS message {entry['sns_message_id']}")
    if not entry or entry["decision"] != PUBLISHING or entry.get("claimed_by") != claimant:
        raise ClaimLost(
            f"window {stamp} is not claimed by this run (ledger: {(entry or {}).get('decision', 'no entry')} "
            f"by {(entry or {}).get('claimed_by', '-')}): not publishing"
        )
    if entry.get(PUBLISH_STARTED):
        raise ClaimLeft(
            f"window {stamp}: claim left by an earlier publish of {claimant}, which may have sent the alert; "
            "not publishing again. Check the alert topic; to release the claim see README (releasing a claim)"
        )
    key = layout.ledger_key(slot, config.changes_prefix)
    try:
        marked = store.write_if(s3, config.bucket, key, alerts.ledger_bytes({**entry, PUBLISH_STARTED: True}),
                                store.JSON, etag)  # fmt: skip
    except store.ConditionFailed:
        raise ClaimLost(f"window {stamp}: the claim changed while this run started publishing") from None
    return entry, marked


def publish_claimed(s3, config: Config, slot: datetime, claimant: str, alert: dict, publish) -> tuple[str, str]:
    """Publish the default pair's due ``alert`` (``analyse_window``'s) of ``claimant``'s claim once, as the
    other pairs' are (``pairs.publish_alerts``): mark the claim started, ``publish(alert)``, record it
    notified. Returns (outcome, what): ``sent`` (the message id), ``skipped`` (notified already, or not this
    run's claim), ``left`` (started by an earlier try: it may have been sent, ops decide) or ``failed``
    (SNS refused it: the mark is taken back, so a retry publishes it). Any other error of the Publish (no
    answer: it may have been sent) keeps the mark and is raised."""
    try:
        claim_before, marked = start_publish(s3, config, slot, claimant)
    except (AlreadyNotified, ClaimLost) as reason:
        return "skipped", f"{config.pair}: {reason}"
    except ClaimLeft as left:
        return "left", str(left)
    try:
        message_id = publish(alert)
    except ClientError as refused:
        key = layout.ledger_key(slot, config.changes_prefix)
        store.write_if(s3, config.bucket, key, alerts.ledger_bytes(claim_before), store.JSON, marked)
        what = f"{config.pair} window {layout.slot_stamp(slot)}"
        return "failed", f"{what}: SNS refused the Publish ({refused}); a retry publishes it"
    record_notified(s3, config, alert["entry"], message_id, claimant)
    return "sent", message_id


def record_notified(s3, config: Config, entry: dict, message_id: str, claimant: str | None = None) -> dict:
    """Replace ``claimant``'s ``publishing`` claim with the window's entry as notified (If-Match on the
    claim just read: nobody else's entry is overwritten). ClaimLost if the entry is not that claim.

    Without ``claimant`` (tests seeding a ledger) the entry is written only where none is claimed.
    """
    entry = {**entry, "decision": NOTIFIED, "sns_message_id": message_id}
    slot = datetime.fromisoformat(entry["window_start"].replace("Z", "+00:00"))
    key = layout.ledger_key(slot, config.changes_prefix)
    existing, etag = read_entry(s3, config, slot)
    ours = existing and existing["decision"] == PUBLISHING and existing.get("claimed_by") == claimant
    if (claimant is not None and not ours) or (claimant is None and existing and existing["decision"] in CLAIMED):
        log.error("Window %s was published as SNS message %s but the ledger no longer holds its claim", key, message_id)
        raise ClaimLost(f"window {layout.slot_stamp(slot)}: published as {message_id}, but the claim is gone")
    try:
        store.write_if(s3, config.bucket, key, alerts.ledger_bytes(entry), store.JSON, etag)
    except store.ConditionFailed:
        log.error("Window %s was published as SNS message %s but its claim changed meanwhile", key, message_id)
        raise ClaimLost(f"window {layout.slot_stamp(slot)}: published as {message_id}, but the claim changed") from None
    return entry


def wait_for_earlier_windows(
    s3, config: Config, slot: datetime, gaps: list[datetime], still_normalizing: StillNormalizing | None
) -> None:
    """The one rule for waiting on earlier windows, for every pair: of the earlier windows ``gaps`` a
    decision of ``slot`` looks at and finds no canonical price in, raise WindowNotReady naming those
    whose record is there (:func:`records_not_normalized`) and whose normalization a run can still
    finish (``still_normalizing(windows)``: the caller asks its scheduler). A window without a record, or
    whose run has failed, finished or will never run, holds nobody: a live alert never waits for another
    window's missing record."""
    if still_normalizing is None or not gaps:
        return
    pending = records_not_normalized(s3, config, gaps)
    waiting = still_normalizing(pending) if pending else []
    if waiting:
        raise WindowNotReady(slot, waiting)


def records_not_normalized(s3, config: Config, gaps: list[datetime]) -> list[datetime]:
    """Of the windows ``gaps`` (sorted), those whose run has a record to normalize: a raw object of any
    pair is there, which lets the run's sensor go on (one listing per day partition)."""
    window_of = {layout.ingestion_window_prefix(s, config.ingestion_prefix): s for s in gaps}
    length = len(next(iter(window_of)))
    found = set()
    for day in layout.day_partitions(gaps[0], gaps[-1]):
        for key in store.list_keys(s3, config.bucket, f"{config.ingestion_prefix}{day}"):
            slot = window_of.get(key[:length])
            read = slot and layout.read_ingestion_key(key, slot, config.ingestion_prefix, config.pair)
            if read:
                found.add(slot)
    return sorted(found)


def _missing_record(s3, config: Config, slot: datetime) -> WindowFailed:
    """Why the default pair has no canonical record of the window: its quarantine reason (WindowFailed:
    bad input fails the window), else none was there (RecordMissing: the pair is late)."""
    stamp = layout.slot_stamp(slot)
    notes = store.quarantine_reasons(s3, config.bucket, config.quarantine_prefix, slot)
    mine = [note for note in notes if not note.get("pair")]  # another pair's note names it
    if mine:
        reason, key = alerts.quoted(mine[0]["reason"]), alerts.quoted(mine[0]["source_key"])
        return WindowFailed(f"record for window {stamp} quarantined: {reason} (object {key})")
    return RecordMissing(
        f"no normalized record for window {stamp} (no raw object was there, or it held no record of this slot)"
    )

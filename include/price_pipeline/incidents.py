"""Ops incidents (README "Ops incidents"): what fails alike window after window is one incident per (kind,
subject), as on-call tools group it. The first failing window opens it (one message), the next ones count it,
a reminder goes every ``PRICE_OPS_REPEAT_MINUTES`` of windows while it lasts, and the first healthy window of
its subject after the last failing one resolves it ("resolved after 1 h 5 min, 13 windows").

The state is one JSON object beside the ledger (``layout.incidents_key``), changed only by conditional writes
(``store.update``): two runs failing alike cannot both open an incident. A message is decided in the write that
changes the state and stays there, ``unsent``, until it went out: a send that fails is tried again by the next
observation (after ``LEASE_SECONDS``, so a sender still at work is not doubled), never decided twice. The
transitions count windows, not the clock: a re-run of a window changes nothing. No Airflow here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from include.price_pipeline import alerts, layout, store

FEED_STALE = "Feed stale"
FEED_PROBLEM = "Feed problem"
PAIR_LATE = "Pair late"
RECORD_QUARANTINED = "Record quarantined"
CLAIM_LEFT = "Alert claim left"
TASK_FAILED = "Task failed"

#: Resolved incidents the state keeps for the page, newest first.
CLOSED_KEPT = 20
#: Failing windows an incident remembers, so a retried or re-run window is counted once.
RECENT_KEPT = 32
#: How long a message decided by one observation is left to its sender before another one sends it.
LEASE_SECONDS = 120
#: Subjects a message names before "and N more".
NAMED = 3


class NotSent(Exception):
    """Messages the state holds as decided that could not be sent (the next observation sends them)."""


@dataclass(frozen=True)
class Failure:
    """One subject failing in a window. ``healer``: the task (``dag_id.task_id``) whose success in a later
    window resolves the incident; ``detail``: what the opening message says of it (quoted text only)."""

    kind: str
    subject: str
    healer: str
    detail: str

    @property
    def key(self) -> str:
        return key(self.kind, self.subject)


@dataclass(frozen=True)
class Observation:
    """What one run saw of ``window``: its failures, and what was healthy (the incidents ``healthy_task``
    heals, and the keys ``healthy``). ``note``: a closing paragraph for the messages opening incidents."""

    window: datetime
    failures: tuple[Failure, ...] = ()
    healthy_task: str = ""
    healthy: frozenset[str] = field(default_factory=frozenset)
    note: str = ""


def task_healer(dag_id: str, task_id: str) -> str:
    """The name a task's incidents carry as ``healer``, which its success in a later window heals."""
    return f"{dag_id}.{task_id}"


def failures_of(dag_id: str, task_id: str, exception: object, detail: str) -> list[Failure]:
    """What a live task's failure is (its last try's): the sensor's is *Feed stale*, the exchange feed's a
    *Feed problem* of each exchange the exception names (``exchanges``), our claim-left failure (the
    ``claim_left`` mark, never the text) an *Alert claim left*, a failure naming a quarantined record a
    *Record quarantined*, any other *Task failed*; the subject the task, healed by its success."""
    healer = task_healer(dag_id, task_id)
    if task_id.startswith("fetch_exchange"):
        return [Failure(FEED_PROBLEM, name, healer, detail) for name in sorted(getattr(exception, "exchanges", ()))
                or [task_id]]  # fmt: skip
    if task_id == "wait_for_price_record":
        kind = FEED_STALE
    elif getattr(exception, "claim_left", False):
        kind = CLAIM_LEFT
    elif "quarantined" in str(exception):
        kind = RECORD_QUARANTINED
    else:
        kind = TASK_FAILED
    return [Failure(kind, task_id, healer, detail)]


def late_pairs(late: dict[str, str], on_time: list[str]) -> tuple[tuple[Failure, ...], frozenset[str]]:
    """(failures, healthy keys) of a live window's pairs: each late pair a *Pair late* (a *Record
    quarantined* when its record was), each pair on time healthy; healed by no task, only by its record."""
    failures = tuple(Failure(RECORD_QUARANTINED if reason.startswith("quarantined") else PAIR_LATE, pair, "",
                             f"- {pair}: {reason}") for pair, reason in sorted(late.items()))  # fmt: skip
    return failures, frozenset(key(kind, pair) for pair in on_time for kind in (PAIR_LATE, RECORD_QUARANTINED))


def opening(failures: list[Failure], window: datetime) -> tuple[str, str]:
    """The message of failures paged without an incident (a backfill's claim left; a state unreadable)."""
    seen = Observation(window, failures=tuple(failures))
    return _message("opened", failures[0].kind, [{"subject": f.subject, "detail": f.detail} for f in failures], seen,
                    footer=False)  # fmt: skip


def key(kind: str, subject: str) -> str:
    return f"{kind}: {subject}"


def empty() -> dict:
    return {"open": {}, "closed": [], "unsent": []}


def parse(body: bytes | None) -> dict:
    """The state object's content (an empty state when there is none)."""
    state = json.loads(body) if body else empty()
    return {**empty(), **state}


def dump(state: dict) -> bytes:
    return (json.dumps(state, sort_keys=True, indent=1) + "\n").encode("utf-8")


def transition(state: dict, seen: Observation, repeat: timedelta) -> tuple[dict, list[tuple[str, dict]]]:
    """The state after ``seen``, and its events: ``("opened" | "reminded" | "resolved", incident)``. A failing
    window counted before (a retry, a re-run) changes nothing; ``repeat`` 0: no reminders."""
    state = json.loads(json.dumps(state))
    opened, events, window = state["open"], [], layout.iso(seen.window)
    for failure in seen.failures:
        incident = opened.get(failure.key)
        if incident is None:
            incident = {"kind": failure.kind, "subject": failure.subject, "healer": failure.healer,
                        "detail": failure.detail, "first": window, "last": window, "windows": 1,
                        "recent": [window], "paged": window}  # fmt: skip
            opened[failure.key] = incident
            events.append(("opened", incident))
            continue
        if window in incident["recent"]:
            continue
        incident["windows"] += 1
        incident["recent"] = sorted([*incident["recent"], window])[-RECENT_KEPT:]
        if window > incident["last"]:
            incident["last"], incident["detail"] = window, failure.detail
        if repeat and seen.window - layout.parse_iso(incident["paged"]) >= repeat:
            incident["paged"] = window
            events.append(("reminded", incident))
    for name, incident in list(opened.items()):
        healthy = name in seen.healthy or (seen.healthy_task and incident["healer"] == seen.healthy_task)
        if healthy and window > incident["last"]:
            closed = {**opened.pop(name), "resolved": window}
            del closed["recent"]
            state["closed"] = [closed, *state["closed"]][:CLOSED_KEPT]
            events.append(("resolved", closed))
    return state, events


def messages(events: list[tuple[str, dict]], seen: Observation) -> list[tuple[str, str]]:
    """One ops message (subject, text) per event and kind: each incident a line of it."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for event, incident in events:
        grouped.setdefault((event, incident["kind"]), []).append(incident)
    return [_message(event, kind, incidents, seen) for (event, kind), incidents in grouped.items()]


def _message(event: str, kind: str, incidents: list[dict], seen: Observation, footer: bool = True) -> tuple[str, str]:
    names = [incident["subject"] for incident in incidents]
    named = ", ".join(names[:NAMED]) + (f" and {len(names) - NAMED} more" if len(names) > NAMED else "")
    at = f"{seen.window:%Y-%m-%d %H:%M} UTC"
    if event == "opened":
        subject = f"{kind}: {named} {at}"
        lines = list(dict.fromkeys(incident["detail"] for incident in incidents))  # one detail said once
        lines += [*(["", seen.note] if seen.note else []), *(["", _opened_footer(kind)] if footer else [])]
    elif event == "reminded":
        subject = f"Still {kind.lower()}: {named}"
        lines = [
            f"{kind}, {incident['subject']}: open since {_at(incident['first'])}, {_windows(incident['windows'])} "
            f"failing, the last {_at(incident['last'])}. Latest:\n{incident['detail']}"
            for incident in incidents
        ]
    else:
        subject = f"Resolved, {kind.lower()}: {named}"
        lines = [f"{kind}, {incident['subject']}: resolved by window {_at(incident['resolved'])}, after "
                 f"{duration(incident)}, {_windows(incident['windows'])} (first {_at(incident['first'])}, last "
                 f"{_at(incident['last'])})" for incident in incidents]  # fmt: skip
        if len(incidents) == 1:
            subject += f" after {duration(incidents[0])}, {_windows(incidents[0]['windows'])}"
    return _subject(subject), "\n".join(lines)


def _opened_footer(kind: str) -> str:
    return (f"Incident opened ({kind}): later windows failing alike are counted, not paged; a reminder while it "
            "lasts (PRICE_OPS_REPEAT_MINUTES); one message when a healthy window resolves it.")  # fmt: skip


def _subject(text: str) -> str:
    subject = f"[price pipeline] {text}"
    return alerts.check_subject(subject if len(subject) < 100 else subject[:96] + "...")


def _windows(count: int) -> str:
    return f"{count} window" + ("s" if count != 1 else "")


def _at(iso: str) -> str:
    return f"{layout.parse_iso(iso):%Y-%m-%d %H:%M} UTC"


def duration(incident: dict) -> str:
    """From the first failing window's start to the resolving window's: ``1 h 5 min``."""
    minutes = int((layout.parse_iso(incident["resolved"]) - layout.parse_iso(incident["first"])).total_seconds()) // 60
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def observe(s3, bucket: str, prefix: str, seen: Observation, repeat: timedelta, send: Callable[[str, str], None],
            now: float, sender: str = "") -> list[tuple[str, str]]:  # fmt: skip
    """Apply ``seen`` to the incident state under ``prefix`` with one conditional write (none when nothing
    changes: a healthy window with nothing open), then ``send(subject, text)`` each message it decided, each
    one ``sender`` (a task instance: its retry is the same sender) left unsent, and each one another sender
    left unsent more than LEASE_SECONDS ago (``now``: epoch seconds, the lease's clock only). A message sent is
    struck from the state; one that fails to go stays there for the next observation, and NotSent is raised
    after the others were tried. Returns the messages sent."""
    sender, mine = sender or uuid.uuid4().hex, []

    def change(body: bytes | None) -> bytes | None:
        stored = parse(body)
        state, events = transition(stored, seen, repeat)
        decided = [{"id": uuid.uuid4().hex, "subject": subject, "text": text}
                   for index, (subject, text) in enumerate(messages(events, seen))]  # fmt: skip
        stale = [each for each in state["unsent"] if each["by"] == sender or now - each["since"] >= LEASE_SECONDS]
        if state == stored and not stale:  # nothing counted, opened, reminded or resolved; nothing to send
            return None
        for each in stale:
            each |= {"since": now, "by": sender}
        state["unsent"] += [{**each, "since": now, "by": sender} for each in decided]
        mine[:] = [each["id"] for each in [*stale, *decided]]
        return dump(state)

    key = layout.incidents_key(prefix)
    body, wrote = store.update(s3, bucket, key, change, "application/json")
    if not wrote:
        return []
    to_send = [each for each in parse(body)["unsent"] if each["id"] in mine]
    sent, errors = [], []
    for each in to_send:
        try:
            send(each["subject"], each["text"])
            sent.append(each)
        except Exception as error:  # noqa: BLE001 - each message is tried; the first error is raised below
            errors.append(error)
    if sent:
        gone = {each["id"] for each in sent}

        def strike(stored: bytes | None) -> bytes | None:
            state = parse(stored)
            state["unsent"] = [each for each in state["unsent"] if each["id"] not in gone]
            return dump(state)

        store.update(s3, bucket, key, strike, "application/json")
    if errors:
        raise NotSent(
            f"{len(errors)} of {len(to_send)} ops messages not sent (kept for the next observation): "
            f"{type(errors[0]).__name__}: {errors[0]}"
        ) from errors[0]
    return [(each["subject"], each["text"]) for each in sent]


def read(s3, bucket: str, prefix: str) -> dict:
    """The incident state (open incidents, the last closed ones, messages not yet sent) for the page."""
    return parse(store.read_bytes(s3, bucket, layout.incidents_key(prefix)))

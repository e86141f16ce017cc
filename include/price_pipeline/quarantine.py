"""Ops' one message of a bulk range with quarantined objects, and which pair each reason file is of
(no Airflow here).
"""

from __future__ import annotations

import math
import re
from datetime import datetime

from include.price_pipeline import alerts, store
from include.price_pipeline.rules import Rules
from include.price_pipeline.settings import Config

#: The ops message of a range with quarantined objects reads at most this many reason files (spread
#: evenly over the range's, in key order) to name the commonest reasons; it always counts all of them.
QUARANTINE_NOTES_READ = 500
#: How many of the commonest quarantine reasons the ops message lists.
COMMON_REASONS = 5

# A value the Glue job quotes in a reason (``_clip``: Python's repr, in ' or "), standing as a word of two
# characters or more (the key grammar's own '.', '-' and '/' stay), and a number, time or date standing as
# a word (not the 5 of "5-minute"): what varies between two objects refused for the same reason.
_QUOTED_VALUE = re.compile(r"""(?<![^\s(\[:=])(?:'(?:[^'\\]|\\.){2,}'|"(?:[^"\\]|\\.){2,}")(?![^\s,;)\]])""")
_NUMBER_WORD = re.compile(r"(?<![\w.])[-+]?\d[\d.eE:+TZ-]*(?![\w-])")
_RECORD_NUMBER = re.compile(r"^record \d+: ")


def reason_kind(reason: str) -> str:
    """What a quarantine reason says, without what varies: its first reason only (a note joins up to
    three with "; "), without "record N: ", quoted values as '...' and numbers, times and dates as N."""
    first = _RECORD_NUMBER.sub("", str(reason).split("; ")[0].strip())
    return _NUMBER_WORD.sub("N", _QUOTED_VALUE.sub("'...'", first)) or "(no reason given)"


def quarantine_report(summary: dict, notes: list[dict], run_url: str) -> tuple[str, str]:
    """(subject, message) telling ops what the range run of ``summary`` left quarantined: the counts and
    the COMMON_REASONS commonest kinds of reason among ``notes`` (see reason_kind), most objects first,
    each with one example object and its full reason. Every text read from S3 is alerts.quoted."""
    quarantined, objects = summary["quarantined"], max(summary.get("objects", 0), summary["quarantined"])
    start, end = (f"{summary[bound][:16]}Z" for bound in ("start", "end"))
    subject = f"[price pipeline] Quarantined in range {start}..{end}: {quarantined} of {objects} objects"
    kinds: dict[str, list[dict]] = {}
    for note in sorted(notes, key=lambda note: note["key"]):
        kinds.setdefault(reason_kind(note.get("reason", "")), []).append(note)
    common = sorted(kinds.items(), key=lambda item: (-len(item[1]), item[0]))[:COMMON_REASONS]
    sample = (
        "" if len(notes) == quarantined else f" (from the reason files of {len(notes)} of them, spread over the range)"
    )
    usable = "; ".join(f"{pair}: {counts['windows']} of {summary['windows']} windows have a usable record"
                       for pair, counts in summary["pairs"].items())  # fmt: skip
    lines = [
        f"The bulk analysis of {summary['start']} to {summary['end']} (end excluded) succeeded, but the Glue job "
        f"quarantined {quarantined} of {objects} objects of the range: {usable}.",
        "",
        f"Commonest reasons{sample}:",
    ]
    for kind, examples in common:
        example = examples[0]
        lines += [
            f"- {len(examples)} object{'' if len(examples) == 1 else 's'}: {alerts.quoted(kind)}",
            f"  e.g. {alerts.quoted(example.get('source_key', ''))}: {alerts.quoted(example.get('reason', ''))}",
        ]
    if len(kinds) > len(common):
        lines.append(f"- and {len(kinds) - len(common)} other kinds of reason")
    lines += [
        "",
        "Each object's copy and reason file are under the quarantine prefix, in its window's folder.",
        f"Run: {run_url}",
    ]
    return alerts.check_subject(subject[: alerts.SUBJECT_LIMIT]), "\n".join(lines) + "\n"


def report_quarantine(s3, config: Config, summary: dict, run_url: str) -> tuple[str, str] | None:
    """The ops (subject, message) of a range run whose range holds quarantined objects, else None."""
    if not summary.get("quarantined"):
        return None
    start, end = (datetime.fromisoformat(summary[bound]) for bound in ("start", "end"))
    keys = store.quarantine_reason_keys(s3, config.bucket, config.quarantine_prefix, start, end)
    notes = store.read_notes(s3, config.bucket, keys[:: max(1, math.ceil(len(keys) / QUARANTINE_NOTES_READ))])
    return quarantine_report(summary, notes, run_url)


def notes(s3, config: Config, rule_set: Rules, start: datetime, end: datetime) -> list[dict]:
    """The reason files the Glue job left for the windows of ``[start, end)``, each with its ``key`` and its
    ``pair``: a reason naming no pair is the legacy alias's, the default pair's."""
    keys = store.quarantine_reason_keys(s3, config.bucket, config.quarantine_prefix, start, end)
    alias = rule_set.default_pair
    return [{**note, "pair": note.get("pair") or alias} for note in store.read_notes(s3, config.bucket, keys)]

"""The one home of the pipeline's names: S3 prefixes, key layout, canonical schema, slot math.

Everything that reads or writes a key derives it from here; the keys, the ingestion key grammar and the
legacy alias are README's "Key layout". The Glue job imports this module from its bundle (``glue_bundle``)
on Glue's Python 3.9, so it keeps to the standard library and to 3.9 (``timezone.utc``, not ``datetime.UTC``;
ruff's ``per-file-target-version`` and ``tests/unit/test_glue_bundle.py`` check).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

SLOT_SECONDS = 300
SLOT = timedelta(seconds=SLOT_SECONDS)

INGESTION_PREFIX = "crypto/01-data-ingestion/"
ANALYSIS_PREFIX = "crypto/02-data-analysis/"
CHANGES_PREFIX = "crypto/03-price-changes/"
QUARANTINE_PREFIX = "crypto/99-quarantine/"
PARQUET_PREFIX = "crypto/02-data-analysis-parquet/"
GLUE_SCRIPTS_PREFIX = "artifacts/glue-scripts/"

GLUE_SCRIPT_PATH = Path(__file__).resolve().parents[1] / "glue" / "normalize_price_record.py"
FIELD_ALIASES_PATH = Path(__file__).resolve().parents[1] / "glue" / "field_aliases.json"

#: Canonical normalized record, in CSV column order (``timestamp``: the UTC slot start, ISO 8601 with Z). No
#: wall-clock fields: re-runs are byte-identical.
CANONICAL_COLUMNS = ("timestamp", "pair", "open", "high", "low", "close", "volume", "quote_volume",
                     "weighted_average", "source_key", "source_format")  # fmt: skip
#: Columns added later (README "Canonical CSV"): a CSV written before them lacks them, so a reader takes them
#: by name and defaults them (``""``).
ADDED_COLUMNS = ("weighted_average_basis", "superseded")
#: The header of every canonical CSV the Glue job writes.
CSV_COLUMNS = CANONICAL_COLUMNS + ADDED_COLUMNS


def slot_start(moment: datetime) -> datetime:
    """Return the UTC start of the 5-minute slot containing ``moment`` (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % SLOT_SECONDS, tz=timezone.utc)


def slot_stamp(slot: datetime) -> str:
    """Format a slot start as the key stamp ``YYYYMMDDTHHMMZ``."""
    return slot.astimezone(timezone.utc).strftime("%Y%m%dT%H%MZ")


ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso(moment: datetime) -> str:
    """UTC ISO 8601 with a Z, to the second: every time the ledger, alerts, the page and the Glue job's
    arguments carry."""
    return moment.astimezone(timezone.utc).strftime(ISO_FORMAT)


def parse_iso(text: str) -> datetime:
    """Inverse of :func:`iso` (exactly its format, else ValueError)."""
    return datetime.strptime(text, ISO_FORMAT).replace(tzinfo=timezone.utc)


def parse_slot_stamp(stamp: str) -> datetime:
    """Inverse of :func:`slot_stamp`."""
    return datetime.strptime(stamp, "%Y%m%dT%H%MZ").replace(tzinfo=timezone.utc)


def partition(slot: datetime) -> str:
    """Hive-style day partition of a slot: ``year=YYYY/month=MM/day=DD/``."""
    slot = slot.astimezone(timezone.utc)
    return f"year={slot:%Y}/month={slot:%m}/day={slot:%d}/"


def ingestion_window_prefix(slot: datetime, prefix: str = INGESTION_PREFIX) -> str:
    """The one prefix under which the window's raw object lands (any extension follows)."""
    return f"{prefix}{partition(slot)}{slot_stamp(slot)}"


_PAIR_SLUG = re.compile(r"([A-Z0-9]{2,12})_([A-Z0-9]{2,12})")


def pair_slug(pair: str) -> str:
    """The key part naming a pair: ``ETH/USDT`` is ``ETH_USDT`` (upper case, ``/`` becomes ``_``)."""
    slug = pair.upper().replace("/", "_")
    if not _PAIR_SLUG.fullmatch(slug):
        raise ValueError(f"pair {pair!r} is not BASE/QUOTE of 2-12 letters or digits each")
    return slug


def ingestion_key(slot: datetime, extension: str, prefix: str = INGESTION_PREFIX, *, pair: str) -> str:
    """Where a producer writes ``pair``'s record of ``slot``, in the window's folder; ``extension`` includes
    its dot (``.json``)."""
    return f"{ingestion_window_prefix(slot, prefix)}/{pair_slug(pair)}{extension}"


def legacy_ingestion_key(slot: datetime, extension: str, prefix: str = INGESTION_PREFIX) -> str:
    """The legacy alias a producer may still write: the default pair's record of ``slot`` at ``<slot><ext>``."""
    return f"{ingestion_window_prefix(slot, prefix)}{extension}"


#: The ingestion key grammar (README "Key layout"): what follows a window's prefix is ``/<BASE>_<QUOTE>`` and
#: an optional suffix, or (the legacy alias) the suffix alone; ``-v<N>`` starting the suffix is version N.
_INGESTION_REST = re.compile(r"(?:/([A-Z0-9]{2,12})_([A-Z0-9]{2,12})((?:[.-][^/]*)?)|([.-][^/]*))")
_VERSION = re.compile(r"-v([1-9][0-9]{0,8})(?:\.|$)")


def record_glob(slot: datetime, pair: str, prefix: str = INGESTION_PREFIX) -> str:
    """The fnmatch pattern of ``pair``'s keys under the window of ``slot``, which the sensor's trigger waits
    for: a wake-up only (it matches some keys outside the grammar; the sensor's listing reads them)."""
    return f"{ingestion_window_prefix(slot, prefix)}/{pair_slug(pair)}*"


def read_ingestion_key(key: str, slot: datetime, prefix: str, default_pair: str) -> tuple[str, int] | None:
    """``(pair, version)`` of a raw object listed under the window of ``slot``, by the ingestion key
    grammar: the slug's pair for ``<slot>/<SLUG>...``, ``default_pair`` for the legacy alias ``<slot>.<...>``
    or ``<slot>-<...>``; None for a key outside the grammar (a ``/`` elsewhere, a folder that is no slug)."""
    match = _INGESTION_REST.fullmatch(key[len(ingestion_window_prefix(slot, prefix)) :])
    if not match:
        return None
    base, quote, pair_suffix, alias_suffix = match.groups()
    version = _VERSION.match(pair_suffix if base else alias_suffix)
    return (f"{base}/{quote}" if base else default_pair), int(version.group(1)) if version else 1


def records_listed(keys: list[str], slots: list[datetime], prefix: str, default_pair: str) -> set[tuple[datetime, str]]:
    """``{(slot, pair)}`` of the windows ``slots`` that have a raw object among the listed ``keys``, each key
    read by :func:`read_ingestion_key` under the window whose prefix it starts with."""
    window_of = {ingestion_window_prefix(slot, prefix): slot for slot in slots}
    length = len(next(iter(window_of), ""))
    found = ((slot, read_ingestion_key(key, slot, prefix, default_pair)) for key in keys
             if (slot := window_of.get(key[:length])))  # fmt: skip
    return {(slot, read[0]) for slot, read in found if read}


#: The name, in a window's folder, of its canonical CSV and of its ledger object.
PAIRS_FILE = "pairs"


def analysis_key(slot: datetime, prefix: str = ANALYSIS_PREFIX) -> str:
    """Where the Glue job writes every pair's canonical record of ``slot``: one CSV, a row per pair."""
    return f"{prefix}{partition(slot)}{slot_stamp(slot)}/{PAIRS_FILE}.csv"


def legacy_analysis_key(slot: datetime, prefix: str = ANALYSIS_PREFIX) -> str:
    """Where the default pair's canonical CSV of ``slot`` lived before one CSV held every pair's row
    (``migrate`` moves its row into :func:`analysis_key`; nothing reads it any more)."""
    return f"{prefix}{partition(slot)}{slot_stamp(slot)}.csv"


def range_objects_key(start: datetime, end: datetime, prefix: str = ANALYSIS_PREFIX) -> str:
    """Where a Glue run over more than one window also writes every canonical CSV it wrote, as JSON lines
    ``{"body": <the object's text>, "key": <its key>}``, so the bulk analysis reads one object, not one per
    window. The folder starts with an underscore: Athena and Hive skip it; no partition listing sees it."""
    return f"{prefix}_ranges/{slot_stamp(start)}-{slot_stamp(end)}.jsonl"


def ledger_key(slot: datetime, prefix: str = CHANGES_PREFIX) -> str:
    """Where the default pair's ledger entry of the window starting at ``slot`` lived before one ledger object
    per window held every pair's (``migrate`` moves such entries into :func:`pairs_ledger_key`)."""
    return f"{prefix}{partition(slot)}{slot_stamp(slot)}.json"


def pairs_ledger_key(slot: datetime, prefix: str = CHANGES_PREFIX) -> str:
    """Where every pair's ledger entry of the window starting at ``slot`` lives: JSON lines, one entry per
    pair (Athena's JSON SerDe reads it as rows)."""
    return f"{prefix}{partition(slot)}{slot_stamp(slot)}/{PAIRS_FILE}.jsonl"


def incidents_key(prefix: str = CHANGES_PREFIX) -> str:
    """The ops incidents' one state object (``incidents``), beside the ledger: the folder starts with an
    underscore, so Athena and Hive skip it and no partition listing sees it."""
    return f"{prefix}_incidents/state.json"


def quarantine_keys(slot: datetime, source_key: str, prefix: str = QUARANTINE_PREFIX) -> tuple[str, str]:
    """(copy key, reason key) for a quarantined object; the source key only enters as a digest."""
    digest = hashlib.sha256(source_key.encode("utf-8")).hexdigest()[:16]
    base = f"{prefix}{partition(slot)}{slot_stamp(slot)}/{digest}"
    return f"{base}.object", f"{base}.reason.json"


_STAMP = re.compile(r"\d{8}T\d{4}Z")


def slot_of_key(key: str) -> datetime:
    """The slot a key under any of the prefixes above belongs to (its last ``YYYYMMDDTHHMMZ``)."""
    stamps = _STAMP.findall(key)
    if not stamps:
        raise ValueError(f"no slot stamp in key {key!r}")
    return parse_slot_stamp(stamps[-1])


def day_partitions(first: datetime, last: datetime) -> list[str]:
    """Every day partition from ``first`` to ``last`` inclusive, in order."""
    day = slot_start(first).replace(hour=0, minute=0)
    out = []
    while day <= last:
        out.append(partition(day))
        day += timedelta(days=1)
    return out


#: The one Parquet object of a month partition under PARQUET_PREFIX.
PARQUET_FILE_NAME = "data.parquet"


def slots_between(start: datetime, end: datetime) -> list[datetime]:
    """Every window start in ``[start, end)``, in order (``start`` on a slot boundary)."""
    slots, slot = [], start
    while slot < end:
        slots.append(slot)
        slot += SLOT
    return slots


def months_between(first: datetime, last: datetime) -> list[tuple[int, int]]:
    """Every ``(year, month)`` from the month of ``first`` to that of ``last`` inclusive, in order."""
    first, last = first.astimezone(timezone.utc), last.astimezone(timezone.utc)
    year, month, out = first.year, first.month, []
    while (year, month) <= (last.year, last.month):
        out.append((year, month))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def month_partition(year: int, month: int) -> str:
    """Hive-style month partition: ``year=YYYY/month=MM/``."""
    return f"year={year:04d}/month={month:02d}/"


def month_analysis_prefix(year: int, month: int, prefix: str = ANALYSIS_PREFIX) -> str:
    """The prefix holding every canonical CSV of a month."""
    return f"{prefix}{month_partition(year, month)}"


def parquet_key(year: int, month: int, pair: str, prefix: str = PARQUET_PREFIX) -> str:
    """Where ``pair``'s canonical records of a month are compacted to Parquet (one object per pair and
    month; Hive partitions pair, year, month for Athena)."""
    return f"{prefix}pair={pair_slug(pair)}/{month_partition(year, month)}{PARQUET_FILE_NAME}"


def legacy_parquet_key(year: int, month: int, prefix: str = PARQUET_PREFIX) -> str:
    """Where the default pair's Parquet month lived before every pair's was under ``pair=`` (``migrate``)."""
    return f"{prefix}{month_partition(year, month)}{PARQUET_FILE_NAME}"


def quarantine_window_prefix(slot: datetime, prefix: str = QUARANTINE_PREFIX) -> str:
    """The folder holding every quarantined object (and reason file) of the window starting at ``slot``."""
    return f"{prefix}{partition(slot)}{slot_stamp(slot)}/"

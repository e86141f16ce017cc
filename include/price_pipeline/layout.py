"""The one home of the pipeline's names: S3 prefixes, key layout, canonical schema, slot math.

Everything that reads or writes a key (the DAGs, the Glue job, the local stand-in and feed,
the Terraform checks, the tests) derives it from here. The Glue job (``include/glue/price_glue``) imports
it too: this module ships in the job's bundle (``glue_bundle``) and runs on Glue's Python 3.9, so it keeps
to the standard library and to 3.9 (``timezone.utc``, not ``datetime.UTC``; ruff's
``per-file-target-version`` and ``tests/unit/test_glue_bundle.py`` check).

Key layout (``<slot>`` is the record's UTC 5-minute slot start as ``YYYYMMDDTHHMMZ``)::

    crypto/01-data-ingestion/year=YYYY/month=MM/day=DD/<slot>.<...>|-<...>   producer writes
    crypto/02-data-analysis/year=YYYY/month=MM/day=DD/<slot>.csv             Glue job writes
    crypto/02-data-analysis/_ranges/<first slot>-<end slot>.jsonl            Glue run of a range writes
    crypto/99-quarantine/year=YYYY/month=MM/day=DD/<slot>/<digest>.object    copy of a bad object
    crypto/99-quarantine/year=YYYY/month=MM/day=DD/<slot>/<digest>.reason.json

A window ``[start, start + 5 min)`` owns the record whose candle starts at ``start``; its ingestion
object is found by listing the one prefix ``ingestion_window_prefix(start)``, never by a bucket scan.

Many pairs: a pair other than the default one writes its raw object under the window's folder, named by
its slug ``BASE_QUOTE`` (``ingestion_key(slot, ext, pair=...)``); every other pair of a window shares one
canonical CSV (a row per pair, by pair), and every pair one ledger object (JSON lines, an entry per pair,
by pair)::

    crypto/01-data-ingestion/year=YYYY/month=MM/day=DD/<slot>/<BASE>_<QUOTE>[.<...>|-<...>]
    crypto/02-data-analysis/year=YYYY/month=MM/day=DD/<slot>/pairs.csv
    crypto/03-price-changes/year=YYYY/month=MM/day=DD/<slot>/pairs.jsonl    ledger, one per window

The same single listing of ``ingestion_window_prefix(start)`` returns every pair's object of the window
(the default pair's ``<slot>.json`` and the others' ``<slot>/<SLUG>...``): one listing per window,
whatever the number of pairs. ``read_ingestion_key`` gives each listed key one pair and version by the
ingestion key grammar (``_INGESTION_REST``), or none: such a key is quarantined.
The shared CSV and ledger object keep S3's PUTs per window constant: on S3
a request costs more than the bytes, and a window of 100 pairs would otherwise write 200 more objects.
The default pair keeps the single-pair raw and CSV keys, so producers need not change
(``read_ingestion_key`` reads them as the default pair).
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

#: Canonical normalized record, in CSV column order. No wall-clock fields: re-runs are byte-identical.
CANONICAL_COLUMNS = (
    "timestamp",  # UTC slot start, ISO 8601 with Z
    "pair",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "weighted_average",
    "source_key",
    "source_format",
)
#: Columns written after CANONICAL_COLUMNS, added later: a canonical CSV written before them lacks them,
#: so a reader takes them by name and defaults them (``""``). ``weighted_average_basis`` says where the
#: weighted average came from: ``record`` (the record gave it), ``volumes`` (volume / quote_volume),
#: ``no_trade`` (a zero-volume candle with open = high = low = close: that one price) or ``typical_price``
#: ((high + low + close) / 3, an approximation the record asked for instead of giving one). ``superseded`` is
#: a JSON list of the window's other raw objects, older than ``source_key``, whose record was not used.
ADDED_COLUMNS = ("weighted_average_basis", "superseded")
#: The header of every canonical CSV the Glue job writes.
CSV_COLUMNS = CANONICAL_COLUMNS + ADDED_COLUMNS
#: The S3 object tag the Glue job puts on a raw object once what it gave is written (canonical CSV or
#: quarantine copy); Terraform expires only raw objects that carry it.
INGESTED_TAG = {"Key": "price-pipeline", "Value": "ingested"}


def slot_start(moment: datetime) -> datetime:
    """Return the UTC start of the 5-minute slot containing ``moment`` (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % SLOT_SECONDS, tz=timezone.utc)


def slot_stamp(slot: datetime) -> str:
    """Format a slot start as the key stamp ``YYYYMMDDTHHMMZ``."""
    return slot.astimezone(timezone.utc).strftime("%Y%m%dT%H%MZ")


def iso(moment: datetime) -> str:
    """UTC ISO 8601 with a Z, to the second: every time the ledger, alerts, the page and the Glue job's
    arguments carry."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def ingestion_key(slot: datetime, extension: str, prefix: str = INGESTION_PREFIX, pair: str = "") -> str:
    """Where a producer writes the record of ``slot``; ``extension`` includes its dot (``.json``).
    ``pair`` empty: the default pair's single-pair key; else the pair's key in the window's folder."""
    folder = f"/{pair_slug(pair)}" if pair else ""
    return f"{ingestion_window_prefix(slot, prefix)}{folder}{extension}"


#: The ingestion key grammar: what follows a window's prefix ``.../<slot>`` in a raw object's key is
#: ``/<BASE>_<QUOTE>`` (another pair's folder; absent: the default pair) and then a suffix, ``.`` or ``-``
#: followed by anything but ``/`` (optional after a pair folder). A suffix starting ``-v<N>`` then ``.`` or
#: its end is version N of the window's record (N from 1; any other suffix is version 1). Every other key
#: under the window belongs to no pair and is quarantined with that reason.
_INGESTION_REST = re.compile(r"(?:/([A-Z0-9]{2,12})_([A-Z0-9]{2,12})((?:[.-][^/]*)?)|([.-][^/]*))")
_VERSION = re.compile(r"-v([1-9][0-9]{0,8})(?:\.|$)")
#: The fnmatch pattern after the window prefix for the default pair's keys. fnmatch's ``*`` also matches
#: ``/``, so it also matches a key such as ``<slot>-v2/x.json``, outside the grammar: the job quarantines
#: that one, and the pair is late for the window with its reason.
DEFAULT_PAIR_KEY_GLOB = "[.-]*"


def record_glob(slot: datetime, pair: str, default_pair: str, prefix: str = INGESTION_PREFIX) -> str:
    """The fnmatch pattern of ``pair``'s keys under the window of ``slot``: what the sensor's trigger
    waits for. A wake-up only: it also matches some keys outside the grammar (``<slot>/<SLUG>X...``),
    which :func:`read_ingestion_key` then gives no pair or another one; and the default pair's pattern
    is its documented ``<slot><suffix>`` (its slug's folder, which the grammar also reads as it, is
    found by the sensor's listing at the deadline)."""
    if pair == default_pair:
        return ingestion_window_prefix(slot, prefix) + DEFAULT_PAIR_KEY_GLOB
    return f"{ingestion_window_prefix(slot, prefix)}/{pair_slug(pair)}*"


def read_ingestion_key(key: str, slot: datetime, prefix: str, default_pair: str) -> tuple[str, int] | None:
    """``(pair, version)`` of a raw object listed under the window of ``slot``, by the ingestion key
    grammar: ``default_pair`` for ``<slot>.<...>`` or ``<slot>-<...>``, the slug's pair for
    ``<slot>/<SLUG>...``; None for a key outside the grammar (a ``/`` elsewhere, a folder that is no slug)."""
    match = _INGESTION_REST.fullmatch(key[len(ingestion_window_prefix(slot, prefix)) :])
    if not match:
        return None
    base, quote, pair_suffix, default_suffix = match.groups()
    version = _VERSION.match(pair_suffix if base else default_suffix)
    return (f"{base}/{quote}" if base else default_pair), int(version.group(1)) if version else 1


def pairs_listed(keys: list[str], slot: datetime, prefix: str, default_pair: str) -> set[str]:
    """The pairs that have a raw object among ``keys`` listed under the window of ``slot``."""
    return {read[0] for read in (read_ingestion_key(k, slot, prefix, default_pair) for k in keys) if read}


def analysis_key(slot: datetime, prefix: str = ANALYSIS_PREFIX) -> str:
    """Where the Glue job writes the default pair's canonical CSV of ``slot``."""
    return f"{prefix}{partition(slot)}{slot_stamp(slot)}.csv"


#: The name, in a window's folder, of the other pairs' shared canonical CSV and of every pair's ledger object.
PAIRS_FILE = "pairs"


def pairs_analysis_key(slot: datetime, prefix: str = ANALYSIS_PREFIX) -> str:
    """Where the Glue job writes the other pairs' canonical records of ``slot``: one CSV, a row per pair."""
    return f"{prefix}{partition(slot)}{slot_stamp(slot)}/{PAIRS_FILE}.csv"


def is_pairs_key(key: str) -> bool:
    """Whether a canonical CSV key is a window's other-pairs CSV (else the default pair's)."""
    return key.endswith(f"/{PAIRS_FILE}.csv")


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


def parquet_key(year: int, month: int, prefix: str = PARQUET_PREFIX, pair: str = "") -> str:
    """Where the month's canonical records are compacted to Parquet (one object per month); another pair
    than the default one under ``pair=<SLUG>/`` (Hive partitions pair, year, month for Athena)."""
    folder = f"pair={pair_slug(pair)}/" if pair else ""
    return f"{prefix}{folder}{month_partition(year, month)}{PARQUET_FILE_NAME}"


def quarantine_window_prefix(slot: datetime, prefix: str = QUARANTINE_PREFIX) -> str:
    """The folder holding every quarantined object (and reason file) of the window starting at ``slot``."""
    return f"{prefix}{partition(slot)}{slot_stamp(slot)}/"

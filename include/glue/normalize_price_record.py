"""AWS Glue Python shell job: normalize raw price records to the canonical CSV, quarantine the rest.

Runs on Glue's Python 3.9 runtime (and, unchanged, in the local stand-in's Glue runner). Standard
library plus boto3 and defusedxml only. Arguments (Glue passes ``--name value`` pairs; unknown ones,
such as Glue's own, are ignored):

    --bucket              S3 bucket
    --ingestion_prefix    raw records, ``<prefix>year=/month=/day=/<slot>...``
    --analysis_prefix     canonical CSV output, one object per slot
    --quarantine_prefix   copies of objects that could not be trusted, with a reason file
    --window_start        first slot to process, ISO 8601 (``2026-11-25T19:30:00Z``)
    --window_end          end of the range, exclusive (default: window_start + 5 minutes)
    --pair                the default pair: an object under a window's single-pair key (``<slot>.<...>``
                          or ``<slot>-<...>``) is for it; a record names it or none; every row carries it
    --pairs               the other configured pairs, comma-separated (``BTC/USDT,SOL/USDT``): an object
                          at ``<slot>/<BASE>_<QUOTE>[.<...>|-<...>]`` is for that pair (any other key:
                          quarantined, see read_ingestion_key); the window's other pairs
                          share one CSV ``<slot>/pairs.csv``, a row per pair (by pair); an object naming
                          no configured pair is quarantined
    --max_object_bytes    objects above this size are quarantined without being read whole
    --field_aliases       JSON: canonical field -> accepted spellings (include/glue/field_aliases.json)

The format of a raw object is detected by its content, never its key: JSON (an object, an envelope
such as ``{"data": ...}``, an array of records, NDJSON, Binance klines), XML (element or attribute
style, through defusedxml), delimited text (CSV, TSV, semicolon; with a header in any column order or
headerless in Poloniex order) and ``key=value`` / ``key: value`` text. Field names are looked up in the
alias file; every record is validated (the configured pair or none, one value per field, numbers that
read one way only, prices finite within [MIN_PRICE, MAX_PRICE], high >= low, open, close and
weighted_average within [low, high], volumes >= 0, a 5-minute slot timestamp from 2009 on) or refused
with a one-line reason. The canonical row's ``weighted_average_basis`` says where its weighted average came
from: ``record`` (given), ``volumes`` (volume / quote_volume), ``no_trade`` (the one price of a candle in
which nothing traded) or ``typical_price``: (high + low + close) / 3, an approximation a record asks for by
declaring ``weightedAverageBasis: typical_price`` (BASIS_FIELD) instead of giving a weighted average (an
exchange whose candles carry no quote volume). Any other value is refused, except the canonical CSV's own
(its output read back as input), which changes nothing.

The window contract: a raw object listed under window W only ever writes W's canonical CSV
``<analysis_prefix>.../<W>.csv``. Its one record of W is a candidate; records of other slots, and
any refused record, send a copy of the object to the quarantine prefix beside a reason file. Among the
objects of W with a candidate the highest key version (``-v<N>``) wins, then the newest LastModified;
a tie in both refuses them (see plan_window); the CSV names the ones it superseded.
Once a window's writes are made, each of its raw objects is tagged ``price-pipeline=
ingested`` (Terraform expires only tagged raw objects). The original is never changed otherwise. A
failure inside one object is its quarantine reason, never the run's. Output holds no wall-clock value,
so a re-run writes byte-identical objects. A summary is printed as the last line (``SUMMARY {json}``).

A run over more than one window also writes all canonical objects it wrote in one JSON-lines object
under ``<analysis_prefix>_ranges/`` (the bulk analysis reads that one instead of one per window). A run
of more than PROCESSES_ABOVE_OBJECTS objects reads and writes them from one process per CPU (botocore
spends a few milliseconds of CPU per request, so one Python process tops out near 300 requests/s).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import re
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import defusedxml.ElementTree as defused_etree
from defusedxml import DefusedXmlException

# --- copy of include/price_pipeline/layout.py (Glue gets this one file); tests/unit/test_layout.py
# --- checks that it agrees with the original.
SLOT_SECONDS = 300
CANONICAL_COLUMNS = (
    "timestamp",
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
ADDED_COLUMNS = ("weighted_average_basis", "superseded")
CSV_COLUMNS = CANONICAL_COLUMNS + ADDED_COLUMNS
INGESTED_TAG = {"Key": "price-pipeline", "Value": "ingested"}


def slot_stamp(slot):
    return slot.astimezone(timezone.utc).strftime("%Y%m%dT%H%MZ")


def partition(slot):
    slot = slot.astimezone(timezone.utc)
    return "year={:%Y}/month={:%m}/day={:%d}/".format(slot, slot, slot)


def ingestion_window_prefix(slot, prefix):
    return prefix + partition(slot) + slot_stamp(slot)


_PAIR_SLUG = re.compile(r"([A-Z0-9]{2,12})_([A-Z0-9]{2,12})")


def pair_slug(pair):
    slug = pair.upper().replace("/", "_")
    if not _PAIR_SLUG.fullmatch(slug):
        raise ValueError("pair {!r} is not BASE/QUOTE of 2-12 letters or digits each".format(pair))
    return slug


_INGESTION_REST = re.compile(r"(?:/([A-Z0-9]{2,12})_([A-Z0-9]{2,12})((?:[.-][^/]*)?)|([.-][^/]*))")
_VERSION = re.compile(r"-v([1-9][0-9]{0,8})(?:\.|$)")


def read_ingestion_key(key, slot, prefix, default_pair):
    match = _INGESTION_REST.fullmatch(key[len(ingestion_window_prefix(slot, prefix)) :])
    if not match:
        return None
    base, quote, pair_suffix, default_suffix = match.groups()
    version = _VERSION.match(pair_suffix if base else default_suffix)
    return ("{}/{}".format(base, quote) if base else default_pair), int(version.group(1)) if version else 1


def analysis_key(slot, prefix):
    return prefix + partition(slot) + slot_stamp(slot) + ".csv"


PAIRS_FILE = "pairs"


def pairs_analysis_key(slot, prefix):
    return prefix + partition(slot) + slot_stamp(slot) + "/" + PAIRS_FILE + ".csv"


def range_objects_key(start, end, prefix):
    return prefix + "_ranges/" + slot_stamp(start) + "-" + slot_stamp(end) + ".jsonl"


def quarantine_keys(slot, source_key, prefix):
    digest = hashlib.sha256(source_key.encode("utf-8")).hexdigest()[:16]
    base = prefix + partition(slot) + slot_stamp(slot) + "/" + digest
    return base + ".object", base + ".reason.json"


# --- end of copy

NUMERIC_FIELDS = ("open", "high", "low", "close", "volume", "quote_volume", "weighted_average")
PRICE_FIELDS = ("open", "high", "low", "close", "weighted_average")
VOLUME_FIELDS = ("volume", "quote_volume")
#: The field a record declares its weighted average's basis with (spellings: BASIS_SPELLINGS, unless the
#: alias file names its own). Its one accepted value, TYPICAL_PRICE, asks the job for (high + low + close) / 3
#: in place of a weighted average the record does not give. The canonical CSV's own values (OUTPUT_BASES: the
#: job's output read back as input) change nothing, as before; any other value refuses the record.
BASIS_FIELD = "weighted_average_basis"
BASIS_SPELLINGS = ("weightedAverageBasis",)
TYPICAL_PRICE = "typical_price"
OUTPUT_BASES = ("record", "volumes", "no_trade")
TYPICAL_PRICE_FIELDS = ("high", "low", "close")
#: Prices that must lie within [low, high].
BOUNDED_FIELDS = ("open", "close", "weighted_average")
#: A price may sit this far (relative) outside [low, high] before it is rejected.
RANGE_TOLERANCE = 1e-6
#: Without high and low, the weighted average must lie within [min(open, close) / OPEN_CLOSE_FACTOR,
#: max(open, close) * OPEN_CLOSE_FACTOR]: no 5-minute candle of a listed pair moves 2x.
OPEN_CLOSE_FACTOR = 2.0
MAX_WORKERS = 16
#: A conditional write of the other pairs' shared CSV is read, merged and tried again this often.
CONDITIONAL_ATTEMPTS = 8
#: S3 answers a failed If-Match / If-None-Match with one of these (412, or 409 for a concurrent write).
CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")
#: Runs of more raw objects than this spread them over processes (one per CPU, at most MAX_PROCESSES).
PROCESSES_ABOVE_OBJECTS = 1000
MAX_PROCESSES = 4
#: Longer ranges are listed by day partition rather than by window prefix (see list_raw_objects).
LIST_BY_DAY_ABOVE_SLOTS = 12

#: JSON envelope keys whose value holds the record(s): ``{"data": {...}}``, ``{"result": [...]}``.
WRAPPER_KEYS = ("data", "result", "results", "records", "candles", "items")
MAX_WRAPPERS = 3
#: XML container levels above the record elements (``<response><candles><candle/>``).
MAX_XML_LEVELS = 4
#: Delimiters in order of preference: the first one found in the first line wins, so a
#: semicolon or tab file may carry thousands separators ("3,120.55") unquoted.
DELIMITERS = (("\t", "tsv"), (";", "csv-semicolon"), (",", "csv"))
#: Headerless delimited rows: Poloniex returnChartData order, in canonical names.
HEADERLESS_COLUMNS = (
    "timestamp",
    "high",
    "low",
    "open",
    "close",
    "volume",
    "quote_volume",
    "weighted_average",
)
#: Binance kline positions in canonical names. The canonical volumes have Poloniex semantics
#: (weighted_average = volume / quote_volume), so Binance's quote-asset volume (index 7, in the
#: pricing currency) is ``volume`` and its base-asset volume (index 5) is ``quote_volume``.
KLINE_COLUMNS = ("timestamp", "open", "high", "low", "close", "quote_volume", None, "volume")
KLINE_CLOSE_INDEX = 6
GRAMMAR_REFUSED = (
    "key does not follow the ingestion key grammar: <slot> then '.' or '-' (the default pair), "
    "or <slot>/<BASE>_<QUOTE> (another pair), and no other '/'"
)
#: Prices outside [MIN_PRICE, MAX_PRICE] are refused: wide enough for every listed pair (SHIB/BTC near
#: 3e-10, BTC/VND near 3e9), narrow enough that no change between two prices overflows (5e-324 or 1e300).
MIN_PRICE = 1e-10
MAX_PRICE = 1e10
#: Timestamps before this are refused (no crypto market data is older); so are those more than
#: FUTURE_SLACK after the window they were found under.
EARLIEST = datetime(2009, 1, 1, tzinfo=timezone.utc)
FUTURE_SLACK = timedelta(days=1)
#: Unix timestamps above this are milliseconds (1e11 seconds is the year 5138).
UNIX_MILLISECONDS_ABOVE = 1e11

_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_KEY = re.compile(r"(?<![^\s,;])([A-Za-z_][\w.-]*)[ \t]*[:=]")
#: Numbers and times are ASCII digits only (re.ASCII): Python reads "٣١٢٠" or "３１２０" as 3120, and their
#: separators would escape the ambiguity rule; any other script is "not a number".
_NUMBER_TEXT = re.compile(r"([+-]?)(\d[\d.,]*|[.,]\d+)((?:[eE][+-]?\d+)?)", re.ASCII)
_UNIX_TIME = re.compile(r"\d+(?:\.\d+)?", re.ASCII)
_ISO_TIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,6}))?)? ?([Zz]|[+-]\d\d:?\d\d)?", re.ASCII
)
_NON_FINITE = ("nan", "inf", "infinity")


class Rejected(Exception):
    """An object or record that cannot be trusted; ``str()`` is the one-line reason."""

    def __init__(self, reason, format_guess="unknown"):
        super().__init__(reason)
        self.format_guess = format_guess


def _clip(value):
    """A short printable form of an input value for a reason line."""
    return repr(str(value)[:40])


#: How much of one text from S3 a log line quotes (alerts.QUOTED_LIMIT).
QUOTED_LIMIT = 300


def quoted(text):
    """A copy of ``alerts.quoted`` (the job runs alone; tests/unit/test_glue_hostile.py checks the copy): text
    read from S3, a key, as the run log shows it, in double quotes on one line with line breaks, control and
    non-ASCII characters and Slack's ``<``, ``>``, ``&`` escaped, so that it can forge no line of the log."""
    escaped = json.dumps(str(text)[:QUOTED_LIMIT], ensure_ascii=True)
    return escaped.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ---------------------------------------------------------------- decoding


def decode_text(data):
    """Bytes to text: UTF-8 (BOM optional) or UTF-16 with BOM; anything else is rejected.

    Control characters other than tab and line breaks mean binary data or a wrong guess of the
    encoding (UTF-16 without its BOM reads as UTF-8 full of NULs), so they are rejected too.
    """
    if data.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        raise Rejected("UTF-32 is not accepted (only UTF-8, or UTF-16 with BOM)")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = _decode(data, "utf-16")
    else:
        text = _decode(data[3:] if data.startswith(b"\xef\xbb\xbf") else data, "utf-8")
    control = _CONTROL_CHARACTER.search(text)
    if control:
        raise Rejected(
            "control character {!r} at offset {}: binary data or a wrong encoding".format(
                control.group(), control.start()
            )
        )
    return text


def _decode(data, encoding):
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise Rejected(
            "not valid {} ({} at byte {}); only UTF-8, or UTF-16 with BOM, is accepted".format(
                encoding.upper(), error.reason, error.start
            )
        ) from None


def _lines(text):
    """The non-blank lines of ``text``."""
    return [line for line in _LINE_BREAK.split(text) if line.strip()]


def _mapping(pairs, source_format):
    """A record from ``(name, value)`` pairs; a name given twice makes the record ambiguous."""
    record = {}
    for name, value in pairs:
        if name in record:
            raise Rejected("field {!r} appears twice in one record".format(name), source_format)
        record[name] = value
    return record


def _named(names, values, source_format):
    """Pair positional ``values`` with ``names`` (a ``None`` name drops its value)."""
    return _mapping([(name, values[i]) for i, name in enumerate(names) if name is not None], source_format)


# ---------------------------------------------------------------- format detection


def parse_object(text, aliases):
    """Detect the format of ``text`` by its content and return ``(format_name, [raw mapping, ...])``.

    The first character tells XML (``<``) and JSON (``{`` or ``[``) from text. Text is key=value when
    every line is made of ``key=value`` or ``key: value`` pairs, and delimited (CSV, TSV, ...) otherwise.
    In JSON and XML a record is any mapping or element holding a price or volume field (``aliases``),
    at any depth: records nested in a record are records of the object too, never hidden by it.
    """
    stripped = text.strip()
    if not stripped:
        raise Rejected("object is empty")
    names = _record_names(aliases)
    if stripped[0] == "<":
        return _parse_xml(stripped, names)
    if stripped[0] in "[{":
        return _parse_json(stripped, names)
    pairs = _key_value_pairs(stripped)
    if pairs is not None:
        return "text-kv", [_mapping(pairs, "text-kv")]
    return _parse_delimited(text)  # unstripped: a trailing tab is an empty last cell


def _record_names(aliases):
    """Every spelling of a price or volume field: a mapping holding one is a record (an envelope such as
    ``{"time": ..., "data": {...}}`` holds none)."""
    return {name for field in NUMERIC_FIELDS for name in (field,) + tuple(aliases.get(field, ()))}


# --- XML


def _parse_xml(text, names):
    """XML, element or attribute style, through defusedxml only: any DTD (so every entity bomb and
    external entity) is refused before anything is expanded."""
    try:
        root = defused_etree.fromstring(text, forbid_dtd=True)
    except DefusedXmlException as error:
        raise Rejected(
            "XML refused ({}): DTDs, entity declarations and external references are not accepted".format(
                type(error).__name__
            ),
            "xml",
        ) from None
    except defused_etree.ParseError as error:
        raise Rejected("XML does not parse: {}".format(error), "xml") from None
    records = _xml_records(root, MAX_XML_LEVELS, names)
    if not records:
        raise Rejected("XML holds no record", "xml")
    return "xml", records


def _xml_records(element, levels, names):
    """The records at or under ``element``. Its fields are its attributes and its text children
    (``<high>0.1</high>``, no children of their own); it is a record when a field is a price or a volume
    (``names``), or when it has fields and nothing else. Its other children (elements with children, or
    attributes only: ``<prev date=".." high=".."/>``) are searched the same way, ``levels`` deep."""
    fields = [(_local_name(name), value.strip()) for name, value in element.attrib.items()]
    nested = []
    for child in element:
        if len(child) or (child.attrib and not (child.text or "").strip()):
            nested.append(child)
            continue
        name = _local_name(child.tag)
        if child.attrib:
            raise Rejected(
                "XML field <{}> carries attributes ({}): a unit or scale on a value is not understood".format(
                    name, ", ".join(sorted(_local_name(attribute) for attribute in child.attrib))
                ),
                "xml",
            )
        fields.append((name, (child.text or "").strip()))
    records = []
    if any(name in names for name, _value in fields) or (fields and not nested):
        records.append(_mapping(fields, "xml"))
    if nested and levels == 0:
        raise Rejected("XML nests records deeper than {} levels".format(MAX_XML_LEVELS), "xml")
    for child in nested:
        records.extend(_xml_records(child, levels - 1, names))
    return records


def _local_name(name):
    """``{urn:ns}high`` -> ``high``."""
    return name.rsplit("}", 1)[-1]


# --- JSON


def _parse_json(text, names):
    """A JSON document, or NDJSON when it is several lines that each start a JSON object."""
    try:
        value = _load_json(text)
    except ValueError as error:
        lines = _lines(text)
        if len(lines) > 1 and all(line.lstrip().startswith("{") for line in lines):
            return "ndjson", _with_nested(_parse_ndjson(lines), names)
        raise Rejected("looks like JSON but does not parse: {}".format(error), "json") from None
    return _json_shape(value, MAX_WRAPPERS, names)


def _load_json(text):
    """``json.loads`` that rejects repeated keys and nesting too deep for the parser."""
    try:
        return json.loads(text, object_pairs_hook=lambda pairs: _mapping(pairs, "json"))
    except RecursionError:
        raise Rejected("JSON nests too deeply to parse", "json") from None


def _parse_ndjson(lines):
    """One JSON object per line."""
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(_load_json(line))
        except ValueError as error:
            raise Rejected("ndjson record {} does not parse: {}".format(number, error), "ndjson") from None
    return records


def _json_shape(value, wrappers_left, names):
    """Name the shape of a parsed JSON document and return ``(format_name, records)``: an envelope
    (``{"data": ...}``) is unwrapped only when it holds no field of its own, and every record nested in a
    record or an envelope is returned too."""
    if isinstance(value, list):
        return _json_list(value, names)
    if not isinstance(value, dict):
        raise Rejected("JSON holds a bare {}, not a record".format(type(value).__name__), "json")
    wrapper = None if _is_record(value, names) else _wrapper(value)
    if wrapper is None:
        return "json", _with_nested([value], names)
    if wrappers_left == 0:
        raise Rejected("JSON wraps its records in more than {} envelopes".format(MAX_WRAPPERS), "json-nested")
    name, records = _json_shape(value[wrapper], wrappers_left - 1, names)
    records += _nested_records([item for key, item in value.items() if key != wrapper], names)
    return ("binance-kline" if name == "binance-kline" else "json-nested"), records


def _is_record(mapping, names):
    return any(name in names for name in mapping)


def _with_nested(records, names):
    """Each record followed by the records nested in it."""
    return [found for record in records for found in [record] + _nested_records(record.values(), names)]


def _nested_records(values, names):
    """Every mapping holding a field (``names``) at any depth inside ``values``, in document order."""
    found, stack = [], list(reversed(list(values)))
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if _is_record(value, names):
                found.append(value)
            stack.extend(reversed(list(value.values())))
        elif isinstance(value, list):
            stack.extend(reversed(value))
    return found


def _wrapper(mapping):
    """The key of an envelope's payload, as ``data`` in ``{"data": {...}}``; None when there is none.

    An envelope reporting an error (``{"error": "Invalid currency pair."}``) is rejected with its message.
    """
    error = mapping.get("error")
    if isinstance(error, (str, list)) and error:
        raise Rejected("producer reported an error: {}".format(_clip(error)), "json")
    for key in WRAPPER_KEYS:
        if isinstance(mapping.get(key), (dict, list)):
            return key
    return None


def _json_list(items, names):
    """A JSON array: of records (a Poloniex returnChartData response), of klines, or one kline."""
    if not items:
        raise Rejected("JSON array is empty", "json-array")
    if all(isinstance(item, dict) for item in items):
        return "json-array", _with_nested(items, names)
    if all(isinstance(item, list) for item in items):
        return "binance-kline", [_kline(item) for item in items]
    if not any(isinstance(item, (dict, list)) for item in items):
        return "binance-kline", [_kline(items)]
    raise Rejected("JSON array mixes records, arrays and plain values", "json-array")


def _kline(values):
    """One Binance kline ``[open_time_ms, open, high, low, close, base_volume, close_time_ms,
    quote_volume, ...]`` as a raw mapping; it must span exactly one 5-minute candle."""
    if len(values) < len(KLINE_COLUMNS):
        raise Rejected("kline has {} values; a Binance kline has at least 8".format(len(values)), "binance-kline")
    opened, closed = values[0], values[KLINE_CLOSE_INDEX]
    span_ms = SLOT_SECONDS * 1000 - 1
    if not (_is_integer(opened) and _is_integer(closed) and closed - opened == span_ms):
        raise Rejected(
            "kline open/close times {}/{} do not span one 5-minute candle".format(_clip(opened), _clip(closed)),
            "binance-kline",
        )
    return _named(KLINE_COLUMNS, values, "binance-kline")


def _is_integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


# --- key=value text


def _key_value_pairs(text):
    """The ``(key, value)`` pairs of ``key=value`` / ``key: value`` text (one pair per line, or several
    separated by spaces, commas or semicolons); None when some line is not made of such pairs."""
    pairs = []
    for line in _lines(text):
        keys = list(_KEY.finditer(line))
        if not keys or line[: keys[0].start()].strip():
            return None
        for index, key in enumerate(keys):
            end = keys[index + 1].start() if index + 1 < len(keys) else len(line)
            pairs.append((key.group(1), line[key.end() : end].strip(" \t,;")))
    return pairs


# --- delimited text


def _parse_delimited(text):
    """CSV, TSV or semicolon-separated text: with a header in any column order, or headerless in the
    Poloniex order (date,high,low,open,close,volume,quoteVolume,weightedAverage)."""
    delimiter, name = _delimiter(_lines(text)[0])
    rows = _rows(text, delimiter, name)
    if not rows:
        raise Rejected("{} holds no values".format(name), name)
    if re.match(r"[A-Za-z_]", rows[0][0]):
        header, body = rows[0], rows[1:]
        if not body:
            raise Rejected("{} has a header and no rows".format(name), name)
    else:
        header, body, name = HEADERLESS_COLUMNS, rows, name + "-headerless"
    for number, row in enumerate(body, 1):
        if len(row) != len(header):
            raise Rejected("{} row {} has {} cells, expected {}".format(name, number, len(row), len(header)), name)
    return name, [_named(header, row, name) for row in body]


def _delimiter(first_line):
    """The delimiter of a text by its first line: tab, then semicolon, then comma."""
    for delimiter, name in DELIMITERS:
        if delimiter in first_line:
            return delimiter, name
    raise Rejected("unrecognized format: not JSON, XML, key=value or delimited text")


def _rows(text, delimiter, name):
    """The non-blank rows of delimited text, cells stripped."""
    try:
        rows = list(csv.reader(io.StringIO(text), delimiter=delimiter, strict=True))
    except csv.Error as error:
        raise Rejected("{} does not parse: {}".format(name, error), name) from None
    return [[cell.strip() for cell in row] for row in rows if any(cell.strip() for cell in row)]


# ---------------------------------------------------------------- normalization and validation


def normalize(raw, aliases, pair, source_key, source_format, decimal=None):
    """One raw mapping to a validated canonical row (a dict keyed by CSV_COLUMNS but ``superseded``).

    ``decimal`` is the object's decimal separator when its text numbers show one (decimal_convention).
    """
    try:
        row = _canonical(raw, aliases, pair, _Numbers(decimal, source_format))
        validate(row)
    except Rejected as error:
        raise Rejected(str(error), source_format) from None
    row["source_key"] = source_key
    row["source_format"] = source_format
    return row


def _spellings(raw, aliases, field):
    """``[(spelling, value), ...]`` of every spelling of ``field`` present (and not empty) in ``raw``."""
    names = (field,) + tuple(name for name in aliases.get(field, ()) if name != field)
    return [(name, raw[name]) for name in names if raw.get(name) not in (None, "")]


def _field(raw, aliases, field, convert):
    """``convert(value)`` of the one value ``field`` has in ``raw`` (None when absent). Two spellings
    with values that convert differently (``"high"`` and ``"h"``) make the record ambiguous."""
    present = _spellings(raw, aliases, field)
    if not present:
        return None
    values = [convert(value) for _name, value in present]
    for (name, value), converted in zip(present[1:], values[1:]):  # noqa: B905 - no strict= on 3.9
        if converted != values[0]:
            raise Rejected(
                "{} given twice with different values: {} {} and {} {}".format(
                    field, present[0][0], _clip(present[0][1]), name, _clip(value)
                )
            )
    return values[0]


def _canonical(raw, aliases, pair, numbers):
    """Pick and convert each canonical field; derive weighted_average only when no spelling of it is given:
    the typical price when the record declares that basis, else from the volumes, or the one price of a
    no-trade candle. ``weighted_average_basis`` says which: record, typical_price, volumes or no_trade."""
    moment = _field(raw, aliases, "timestamp", _timestamp)
    if moment is None:
        raise Rejected("record has no timestamp field")
    if moment < EARLIEST:
        raise Rejected("timestamp {} is before {}: no market data that old".format(moment.isoformat(), EARLIEST.year))
    if moment.second or moment.microsecond or moment.minute % 5:
        raise Rejected("timestamp {} is not on a 5-minute boundary".format(moment.isoformat()))
    row = dict.fromkeys(CANONICAL_COLUMNS)
    row["timestamp"] = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    _field(raw, aliases, "pair", lambda named: _pair(named, pair))
    row["pair"] = pair
    for field in NUMERIC_FIELDS:
        row[field] = _field(raw, aliases, field, lambda value, field=field: numbers.read(value, field))
    row["weighted_average_basis"] = "record"
    basis = _field(raw, {BASIS_FIELD: aliases.get(BASIS_FIELD, BASIS_SPELLINGS)}, BASIS_FIELD, _declared_basis)
    if basis == TYPICAL_PRICE:
        row["weighted_average"], row["weighted_average_basis"] = _typical_price(row), TYPICAL_PRICE
    elif row["weighted_average"] is None:
        if _no_trade(row):
            row["weighted_average"], row["weighted_average_basis"] = row["close"], "no_trade"
        else:
            row["weighted_average"] = _derived_weighted_average(row["volume"], row["quote_volume"])
            row["weighted_average_basis"] = "volumes"
    return row


def _declared_basis(value):
    """A record's declared weighted average basis: TYPICAL_PRICE, or one of the canonical CSV's own
    (OUTPUT_BASES, which change nothing); anything else is refused."""
    if value != TYPICAL_PRICE and value not in OUTPUT_BASES:
        raise Rejected(
            "{} {} is not accepted: the only basis a record may declare is {}".format(
                BASIS_FIELD, _clip(value), TYPICAL_PRICE
            )
        )
    return value


def _typical_price(row):
    """(high + low + close) / 3 of a record that declared the typical_price basis: it gives all three
    prices, and no weighted average of its own but that one (the canonical row read back)."""
    missing = [field for field in TYPICAL_PRICE_FIELDS if row[field] is None]
    if missing:
        raise Rejected(
            "{} {} needs high, low and close; the record has no {}".format(
                BASIS_FIELD, TYPICAL_PRICE, " or ".join(missing)
            )
        )
    typical = (row["high"] + row["low"] + row["close"]) / 3
    given = row["weighted_average"]
    # A weighted average alongside is the job's own canonical row read back, or a contradiction.
    if given is not None and abs(given - typical) > RANGE_TOLERANCE * typical:
        raise Rejected(
            "{} {} given with a weighted_average {} that is not (high + low + close) / 3 = {}".format(
                BASIS_FIELD, TYPICAL_PRICE, _clip(given), _clip(typical)
            )
        )
    return typical


def _no_trade(row):
    """A candle in which nothing traded: every volume given is 0 and open = high = low = close."""
    volumes = [row[field] for field in VOLUME_FIELDS if row[field] is not None]
    prices = [row[field] for field in ("open", "high", "low", "close")]
    return bool(volumes) and not any(volumes) and None not in prices and len(set(prices)) == 1


def _pair(named, configured):
    """Check that a record's pair names the job's ``--pair`` (see pair_spellings); anything else is refused."""
    if not isinstance(named, str) or len(named) > 40 or not named.strip().isprintable():
        raise Rejected("pair is not a short text: {}".format(_clip(named)))
    if named.strip().upper() not in pair_spellings(configured):
        raise Rejected("record names pair {}, not the configured {}".format(_clip(named), configured))
    return configured


def pair_spellings(configured):
    """How a record may name the configured ``BASE/QUOTE`` pair (case-insensitive): ``BASE/QUOTE``,
    ``BASE-QUOTE``, ``BASE_QUOTE``, ``BASE:QUOTE``, ``BASEQUOTE`` (Binance) and ``QUOTE_BASE`` (Poloniex).
    A configured pair without a slash is matched as written."""
    base, slash, quote = configured.strip().upper().partition("/")
    if not slash:
        return {base}
    return {base + separator + quote for separator in ("/", "-", "_", ":", "")} | {quote + "_" + base}


def _derived_weighted_average(volume, quote_volume):
    """weighted_average from the volumes with Poloniex semantics: volume / quote_volume."""
    if volume is None or quote_volume is None:
        raise Rejected("no weighted_average, and no volume and quote_volume to derive it")
    if not (volume > 0 and quote_volume > 0):
        raise Rejected(
            "no weighted_average, and volume {!r} / quote_volume {!r} cannot derive one".format(volume, quote_volume)
        )
    return volume / quote_volume


# --- numbers written as text: which separator is the decimal one


def _number_shape(text):
    """``(digits, evidence, ambiguous)`` of a number written as text, or None when it is no number.

    ``digits`` is the number with a ``.`` decimal point (None while ambiguous); ``evidence`` the
    decimal separator the text shows (``.``, ``,`` or None); ``ambiguous`` the separator of a value
    that reads two ways, 1000x apart (``3,120`` is 3120 or 3.12; ``1.234`` is 1.234 or 1234).
    """
    match = _NUMBER_TEXT.fullmatch(text)
    if not match:
        return None
    sign, body, exponent = match.groups()
    commas, dots = body.count(","), body.count(".")
    if commas and exponent:  # "3,120e0": an exponent belongs to a decimal point only
        return None
    if commas and dots:
        point = "," if body.rfind(",") > body.rfind(".") else "."
        grouping = "." if point == "," else ","
        whole, fraction = body.rsplit(point, 1)
        if point in whole or grouping in fraction or not _grouped(whole, grouping):
            return None
        return sign + whole.replace(grouping, "") + "." + fraction + exponent, point, None
    separator = "," if commas else "." if dots else None
    if separator is None:
        return sign + body + exponent, None, None
    if body.count(separator) > 1:  # only a thousands separator repeats: "1,233,214" or "1.233.214"
        if not _grouped(body, separator):
            return None
        return sign + body.replace(separator, "") + exponent, "." if separator == "," else ",", None
    whole, fraction = body.split(separator)
    if not (whole or fraction):
        return None
    if re.fullmatch(r"[1-9][0-9]{0,2}", whole) and len(fraction) == 3 and not exponent:
        return None, None, separator
    return sign + (whole or "0") + "." + (fraction or "0") + exponent, separator, None


def _grouped(text, separator):
    """Whether ``text`` is digits in thousands groups: ``1,233,214``."""
    return re.fullmatch(r"[1-9][0-9]{0,2}(?:" + re.escape(separator) + r"[0-9]{3})+", text) is not None


def decimal_convention(raws, aliases):
    """The decimal separator the numbers written as text in one object's records show (``.``, ``,`` or
    None when none shows one); an object that shows both is refused: one of them would be misread."""
    shown = {}
    for raw in raws:
        for field in NUMERIC_FIELDS:
            for _name, value in _spellings(raw, aliases, field):
                shape = _number_shape(value.strip()) if isinstance(value, str) else None
                if shape and shape[1]:
                    shown.setdefault(shape[1], value)
    if len(shown) > 1:
        raise Rejected(
            "numbers use both '.' and ',' as decimal separator ({} and {})".format(_clip(shown["."]), _clip(shown[","]))
        )
    return next(iter(shown), None)


class _Numbers:
    """Reads the numbers of one object: its decimal convention, and whether it is semicolon-delimited
    text (where a lone comma is the decimal separator: ``0,086`` and ``3,120`` read 0.086 and 3.12)."""

    def __init__(self, decimal, source_format):
        self.decimal = decimal
        self.semicolon = source_format.startswith("csv-semicolon")

    def read(self, value, field):
        """A JSON number or a number written as text, as a finite float; a value that could be read two
        ways, 1000x apart, is refused (never guessed)."""
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise Rejected("{} is not a number: {}".format(field, _clip(value)))
        if isinstance(value, str):
            value = self._digits(value.strip(), field)
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            number = math.inf
        if not math.isfinite(number):
            raise Rejected("{} is not finite: {}".format(field, _clip(value)))
        return number

    def _digits(self, text, field):
        if text.lstrip("+-").lower() in _NON_FINITE:
            raise Rejected("{} is not finite: {}".format(field, _clip(text)))
        shape = _number_shape(text)
        if shape is None:
            raise Rejected("{} is not a number: {}".format(field, _clip(text)))
        digits, _evidence, ambiguous = shape
        if ambiguous is None:
            return digits
        point = self._point(ambiguous)
        if point is None:
            raise Rejected(
                "{} {} is ambiguous: {!r} may be the decimal or the thousands separator".format(
                    field, _clip(text), ambiguous
                )
            )
        whole, fraction = text.split(ambiguous)
        return whole + "." + fraction if point == ambiguous else whole + fraction

    def _point(self, ambiguous):
        """The decimal separator that settles a value with one ``ambiguous`` separator, or None.

        Semicolon text writes decimals with a comma unless its other numbers show a point; elsewhere a
        point is the decimal separator unless the object's numbers show a comma, and a lone comma
        (``"3,120"`` in JSON) is never settled.
        """
        if self.semicolon:
            if ambiguous == ",":
                return self.decimal or ","
            return self.decimal
        if ambiguous == ".":
            return "." if self.decimal in (None, ".") else None
        return None


def _timestamp(value):
    """Unix seconds or milliseconds (a number or digits) or ISO 8601 with an offset, as aware UTC."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Rejected("timestamp not understood: {}".format(_clip(value)))
    if not isinstance(value, str) or _UNIX_TIME.fullmatch(value.strip()):
        return _from_unix(value)
    return _from_iso(value.strip())


def _from_unix(value):
    """Unix seconds, or milliseconds when above UNIX_MILLISECONDS_ABOVE, as aware UTC."""
    try:
        seconds = float(value)
        if seconds > UNIX_MILLISECONDS_ABOVE:
            seconds /= 1000.0
        if not seconds >= 0:
            raise ValueError("negative")
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise Rejected("timestamp out of range: {}".format(_clip(value))) from None


def _from_iso(text):
    """ISO 8601 date and time with ``Z`` or a ``+hh:mm`` offset, as aware UTC (no offset: rejected)."""
    match = _ISO_TIME.fullmatch(text)
    if not match:
        raise Rejected("timestamp not understood: {}".format(_clip(text)))
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if offset is None:
        raise Rejected("timestamp has no UTC offset: {}".format(_clip(text)))
    try:
        zone = timezone.utc if offset.upper() == "Z" else _offset(offset)
        parts = [int(part) for part in (year, month, day, hour, minute, second or 0)]
        moment = datetime(*parts, int((fraction or "").ljust(6, "0")), tzinfo=zone)
        return moment.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise Rejected("timestamp is not a valid time: {}".format(_clip(text))) from None


def _offset(text):
    """``+05:30`` or ``-0800`` as a fixed timezone."""
    sign = -1 if text[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(text[1:3]), minutes=int(text[-2:])))


def validate(row):
    """Reject a row whose numbers cannot be trusted: prices finite and within [MIN_PRICE, MAX_PRICE],
    volumes finite and >= 0, high >= low, and open, close and weighted_average within [low, high]
    (RANGE_TOLERANCE); without high or low, weighted_average within OPEN_CLOSE_FACTOR of open and close."""
    for field in PRICE_FIELDS:
        value = row[field]
        if value is not None and not (math.isfinite(value) and value > 0):
            raise Rejected("{} must be finite and > 0, got {!r}".format(field, value))
        if value is not None and not MIN_PRICE <= value <= MAX_PRICE:
            raise Rejected(
                "{} {!r} is outside the plausible prices [{}, {}]".format(field, value, MIN_PRICE, MAX_PRICE)
            )
    for field in VOLUME_FIELDS:
        value = row[field]
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise Rejected("{} must be finite and >= 0, got {!r}".format(field, value))
    low, high = row["low"], row["high"]
    if low is not None and high is not None and high < low:
        raise Rejected("high {!r} is below low {!r}".format(high, low))
    for field in BOUNDED_FIELDS:
        if _outside(row[field], low, high):
            raise Rejected("{} {!r} outside [low {!r}, high {!r}]".format(field, row[field], low, high))
    known = [row[field] for field in ("open", "close") if row[field] is not None]
    average = row["weighted_average"]
    if (low is None or high is None) and known and average is not None:
        floor, ceiling = min(known) / OPEN_CLOSE_FACTOR, max(known) * OPEN_CLOSE_FACTOR
        if not floor <= average <= ceiling:
            raise Rejected(
                "weighted_average {!r} is not within [{!r}, {!r}]: without high and low it must lie within {}x "
                "of open and close".format(average, floor, ceiling, OPEN_CLOSE_FACTOR)
            )


def _outside(value, low, high):
    """Whether ``value`` lies outside [low, high] by more than RANGE_TOLERANCE (None: no bound)."""
    if value is None:
        return False
    slack = RANGE_TOLERANCE * value
    return (low is not None and value < low - slack) or (high is not None and value > high + slack)


def to_csv(*rows):
    """The canonical CSV object of its rows: header plus one line each, floats in shortest round-trip form."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(CSV_COLUMNS)
    for row in rows:
        cells = [_csv_cell(row.get(column)) for column in CSV_COLUMNS]
        # The csv module quotes only the line terminator's characters: a key holding a carriage return
        # (S3 allows it) would break the row, so such a row has every cell quoted.
        stray_return = any("\r" in cell for cell in cells if isinstance(cell, str))
        quoting = csv.QUOTE_ALL if stray_return else csv.QUOTE_MINIMAL
        csv.writer(out, lineterminator="\n", quoting=quoting).writerow(cells)
    return out.getvalue().encode("utf-8")


def _csv_cell(value):
    """Empty for a missing value, ``repr`` (shortest round trip) for a float, else the value."""
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else value


# ---------------------------------------------------------------- the job


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--ingestion_prefix", required=True)
    parser.add_argument("--analysis_prefix", required=True)
    parser.add_argument("--quarantine_prefix", required=True)
    parser.add_argument("--window_start", required=True)
    parser.add_argument("--window_end", default="")
    parser.add_argument("--pair", default="ETH/USDT")
    parser.add_argument("--pairs", default="")
    parser.add_argument("--max_object_bytes", type=int, default=1048576)
    parser.add_argument("--field_aliases", required=True)
    args, _glue_own_arguments = parser.parse_known_args(argv)
    args.aliases = json.loads(args.field_aliases)
    args.other_pairs = [pair.strip() for pair in args.pairs.split(",") if pair.strip() and pair.strip() != args.pair]
    args.start = _timestamp(args.window_start)
    args.end = _timestamp(args.window_end) if args.window_end else args.start + timedelta(seconds=SLOT_SECONDS)
    return args


def window_slots(start, end):
    slot, slots = start, []
    while slot < end:
        slots.append(slot)
        slot += timedelta(seconds=SLOT_SECONDS)
    return slots


def list_raw_objects(s3, args):
    """``[(key, size, slot, modified), ...]`` in key order: every raw object of the range with its listed
    size and LastModified (ISO 8601) and the window whose prefix it lies under.

    A range of up to LIST_BY_DAY_ABOVE_SLOTS windows lists each window's prefix (one LIST per window, as
    a single live window always has). A longer range lists each day partition it touches once, in
    parallel, and keeps the keys under one of its window prefixes: the same keys, with ~30 requests
    instead of 8,640 for a month.
    """
    slots = window_slots(args.start, args.end)
    slot_of_prefix = {ingestion_window_prefix(slot, args.ingestion_prefix): slot for slot in slots}
    if len(slots) <= LIST_BY_DAY_ABOVE_SLOTS:
        listings = [_list_objects(s3, args.bucket, prefix) for prefix in slot_of_prefix]
    else:
        days = sorted({args.ingestion_prefix + partition(slot) for slot in slots})
        with ThreadPoolExecutor(min(MAX_WORKERS, len(days))) as pool:
            listings = list(pool.map(lambda day: _list_objects(s3, args.bucket, day), days))
    lengths = sorted({len(prefix) for prefix in slot_of_prefix})
    found = {}
    for listing in listings:
        for key, size, modified in listing:
            for length in lengths:
                slot = slot_of_prefix.get(key[:length])
                if slot is not None:
                    found[key] = (key, size, slot, modified)
                    break
    return [found[key] for key in sorted(found)]


def list_raw_keys(s3, args):
    """Every raw object key of the range, in key order."""
    return [listed[0] for listed in list_raw_objects(s3, args)]


def _list_objects(s3, bucket, prefix):
    """``[(key, size, LastModified as ISO 8601 UTC), ...]`` of every object under ``prefix``."""
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            # S3's LastModified has one-second resolution (whatever a stand-in gives): compare seconds only
            modified = item["LastModified"].astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            out.append((item["Key"], item["Size"], modified))
    return out


def read_bounded(s3, bucket, key, limit, size=None):
    """Read at most ``limit`` bytes; reject larger objects without reading them whole.

    ``size`` is the object's size from a listing; without it a HEAD request asks for it.
    """
    if size is None:
        size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    if size > limit:
        raise Rejected("object is {} bytes, over the {}-byte cap".format(size, limit))
    body = s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-{}".format(limit))["Body"]
    data = body.read(limit + 1)
    if len(data) > limit:
        raise Rejected("object grew past the {}-byte cap while being read".format(limit))
    return data


def process_object(s3, args, key, size=None):
    """Return ``(rows, problems)`` for one raw object; raise Rejected if nothing in it can be used."""
    return records_of(read_bounded(s3, args.bucket, key, args.max_object_bytes, size), args, key)


def records_of(data, args, key, pair=None):
    """``(rows, problems)`` of one raw object's bytes: its valid canonical rows, and a one-line reason
    per refused record; Rejected (with its format guess) when no record in it can be used. ``pair``: the
    pair the object's key is for (default ``--pair``)."""
    fmt = "unknown"
    try:
        fmt, raws = parse_object(decode_text(data), args.aliases)
        decimal = decimal_convention(raws, args.aliases)
    except Rejected as error:
        raise Rejected(str(error), error.format_guess if error.format_guess != "unknown" else fmt) from None
    rows, problems = [], []
    for index, raw in enumerate(raws):
        try:
            rows.append(normalize(raw, args.aliases, pair or args.pair, key, fmt, decimal))
        except Rejected as error:
            problems.append("record {}: {}".format(index, error))
    if not rows:
        raise Rejected(_one_line(problems) or "no record found", fmt)
    return rows, problems


def _one_line(reasons):
    """Several reasons as one line: the first three, and how many more there are."""
    line = "; ".join(reasons[:3])
    return line + "; and {} more".format(len(reasons) - 3) if len(reasons) > 3 else line


# --- the window contract: what an object found under window W may write


def assess(data, args, key, slot, pair=None):
    """What the raw object ``key``, listed under window ``slot``, offers that window.

    ``data`` is its bytes, or the Rejected raised while reading it. Returns ``{"key", "row", "reasons",
    "format"}``: ``row`` is the object's one valid record of ``slot`` (None if it has none, or more than
    one), ``reasons`` says why anything else in it was refused; a record of any other slot is refused,
    whatever it holds. Any failure inside is the object's own: it becomes a reason, never a crash.
    ``pair`` is the pair its key is for (default ``--pair``).
    """
    outcome = {"key": key, "row": None, "reasons": [], "format": "unknown"}
    try:
        if isinstance(data, Rejected):
            raise data
        rows, problems = records_of(data, args, key, pair)
    except Rejected as error:
        outcome.update(reasons=[str(error)], format=error.format_guess)
        return outcome
    except Exception as error:  # noqa: BLE001 - a bug meeting one object must not fail every window
        detail = " ".join(str(error).split())[:200]  # one line, bounded
        outcome["reasons"] = ["could not be processed: {}: {}".format(type(error).__name__, detail)]
        return outcome
    stamp = slot.strftime("%Y-%m-%dT%H:%M:%SZ")
    mine = [row for row in rows if row["timestamp"] == stamp]
    outcome["format"] = rows[0]["source_format"]
    outcome["reasons"] = problems + [_elsewhere(row["timestamp"], slot) for row in rows if row["timestamp"] != stamp]
    if len(mine) == 1:
        outcome["row"] = mine[0]
    elif mine:
        outcome["reasons"].append("{} records of window {} in one object: none is used".format(len(mine), stamp))
    return outcome


def _elsewhere(stamp, slot):
    """Why a record of slot ``stamp`` found under window ``slot`` is refused."""
    moment = _timestamp(stamp)
    if moment >= slot + timedelta(seconds=SLOT_SECONDS) + FUTURE_SLACK:
        return "record of {} is more than a day after window {}".format(stamp, slot_stamp(slot))
    return "record of {} found under window {}: an object writes only its own window".format(stamp, slot_stamp(slot))


def plan_window(args, slot, outcomes, pair=None):
    """Every write the objects listed under window ``slot`` lead to, decided before any is made.

    ``outcomes`` are ``assess`` results with the key's ``version`` and the listing's ``modified`` added. Among
    the objects with a valid record of the window, the highest version wins, then the newest (LastModified, to
    the second); two at the top with the same version and second are both refused (which one is newer is
    unknown), and so are the older ones. The winner gives the canonical CSV, which names the other candidates it
    superseded; an object with any refused record is copied to quarantine with the reasons; every object is
    tagged as ingested once those writes are made. The keys written are ``analysis_key(slot)`` and
    ``quarantine_keys(slot, <listed key>)``, nothing else; for another ``pair`` than ``--pair`` the plan holds
    the ``row`` for the window's shared CSV instead (see plan_pairs).
    """
    other = pair if pair and pair != args.pair else ""
    candidates = sorted((o for o in outcomes if o["row"] is not None), key=lambda o: _order(o) + (o["key"],))
    tied = [o for o in candidates if _order(o) == _order(candidates[-1])]
    if len(tied) > 1:
        top = (
            "{} objects of window {} have version {} and LastModified {}: which is newer is unknown, none is used "
            "(write a correction with a higher -v<N>)".format(len(tied), slot_stamp(slot), *_order(tied[0]))
        )
        for outcome in candidates:  # an older one is not used either: the producer wrote a newer record since
            outcome["reasons"].append(top if outcome in tied else "older than the window's newest records; " + top)
        candidates = []
    plan = {"window": slot_stamp(slot), "csv": None, "row": None, "used": None, "quarantine": []}
    plan["tag"] = sorted(o["key"] for o in outcomes)
    plan["superseded"] = [o["key"] for o in candidates[:-1]]
    if candidates:
        plan["used"] = candidates[-1]["key"]
        row = dict(candidates[-1]["row"], superseded=json.dumps(plan["superseded"]) if plan["superseded"] else "")
        if other:
            plan["row"] = row
        else:
            plan["csv"] = (analysis_key(slot, args.analysis_prefix), to_csv(row))
    for outcome in sorted(outcomes, key=lambda o: o["key"]):
        if outcome["reasons"]:
            copy_key, reason_key = quarantine_keys(slot, outcome["key"], args.quarantine_prefix)
            note = {
                "source_key": outcome["key"],
                "reason": _one_line(outcome["reasons"]),
                "format_guess": outcome["format"],
                "window": plan["window"],
                "record_used": outcome["key"] == plan["used"],
            }
            if other:
                note["pair"] = other
            plan["quarantine"].append((outcome["key"], copy_key, reason_key, note))
    return plan


def _order(outcome):
    """Which of a window's candidate objects is the newer: the key's version, then its LastModified."""
    return outcome["version"], outcome["modified"]


def plan_pairs(args, slot, plans, tag_workers=1):
    """The other pairs' plans of window ``slot`` as one: their quarantine writes and tags, and the rows of
    the one CSV ``pairs_analysis_key(slot)``, a row per pair with a record (see write_pairs_csv). One object
    for every pair: S3 bills a PUT per object, whatever its size. ``tag_workers``: threads tagging the
    window's raw objects (a live window's run has nothing else to do in parallel)."""
    rows = [plan["row"] for plan in plans if plan["row"] is not None]
    return {
        "window": slot_stamp(slot),
        "csv": None,
        "pairs_csv": (pairs_analysis_key(slot, args.analysis_prefix), rows) if rows else None,
        "quarantine": [item for plan in plans for item in plan["quarantine"]],
        "tag": sorted(key for plan in plans for key in plan["tag"]),
        "tag_workers": tag_workers,
    }


def write_pairs_csv(s3, bucket, key, rows):
    """Write the window's shared CSV of the other pairs with ``rows`` (re-derived by this run) and every row
    it holds of a pair this run did not re-derive (a pair gone from the rules, or whose raw object expired):
    a re-run loses no pair. The write is conditional on the version read (If-None-Match: * to create,
    If-Match to replace), read and merged again when another run wrote in between; unchanged bytes are not
    written again. Returns ``(key, body)`` as it stands."""
    fresh = {row["pair"] for row in rows}
    for _attempt in range(CONDITIONAL_ATTEMPTS):
        current, etag = _read_with_etag(s3, bucket, key)
        kept = list(csv.DictReader(io.StringIO(current.decode("utf-8")))) if current else []
        merged = sorted([row for row in kept if row["pair"] not in fresh] + rows, key=lambda row: row["pair"])
        body = to_csv(*merged)
        if body == current:
            return key, body
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            conditional_put(s3, condition, Bucket=bucket, Key=key, Body=body, ContentType="text/csv")
            return key, body
        except Exception as error:  # noqa: BLE001 - botocore's ClientError, told apart by its code
            if _error_code(error) not in CONDITION_FAILED:
                raise
    raise RuntimeError("{} changed under {} conditional writes in a row".format(key, CONDITIONAL_ATTEMPTS))


#: The request headers of S3's conditional writes, by boto3 parameter name.
CONDITION_HEADERS = {"IfMatch": "If-Match", "IfNoneMatch": "If-None-Match"}
_CONDITION = threading.local()


def conditional_put(s3, condition, **kwargs):
    """PutObject on ``condition`` (``{"IfNoneMatch": "*"}`` or ``{"IfMatch": etag}``), which S3 enforces.
    Glue's Python shell 3.9 bundles a botocore from before S3's conditional writes, which has no such
    parameters (it would refuse them before sending): there the same headers go on the request."""
    members = s3.meta.service_model.operation_model("PutObject").input_shape.members
    if all(name in members for name in condition):
        return s3.put_object(**kwargs, **condition)
    return put_with_condition_headers(s3, condition, **kwargs)


def put_with_condition_headers(s3, condition, **kwargs):
    """PutObject with ``condition`` sent as its HTTP headers (any botocore version)."""
    s3.meta.events.register("before-call.s3.PutObject", _add_condition_headers, unique_id=__name__ + ".condition")
    _CONDITION.headers = {CONDITION_HEADERS[name]: value for name, value in condition.items()}
    try:
        return s3.put_object(**kwargs)
    finally:
        _CONDITION.headers = None


def _add_condition_headers(params, **_):
    params["headers"].update(getattr(_CONDITION, "headers", None) or {})


def _read_with_etag(s3, bucket, key):
    """``(bytes, ETag)`` of an object, ``(None, None)`` when there is none."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except Exception as error:  # noqa: BLE001 - botocore's ClientError, told apart by its code
        if _error_code(error) in ("NoSuchKey", "404", "NotFound"):
            return None, None
        raise
    return response["Body"].read(), response["ETag"]


def _error_code(error):
    """The S3 error code of a botocore ClientError (its HTTP status when it has none); None for others."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return None
    return response.get("Error", {}).get("Code") or str(response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def apply_plan(s3, args, plan):
    """Make a window's planned writes: quarantine copies and reasons, the canonical CSV (or the other
    pairs' shared one), then the ``price-pipeline=ingested`` tag on each raw object of the window, only once
    those writes are made: the lifecycle rule expires tagged objects. A superseded object is tagged too
    (the CSV names it). Returns ``(key, body)`` of the CSV written, or None."""
    for source_key, copy_key, reason_key, note in plan["quarantine"]:
        s3.copy_object(
            Bucket=args.bucket,
            Key=copy_key,
            CopySource={"Bucket": args.bucket, "Key": source_key},
            TaggingDirective="REPLACE",  # the copy is not "ingested": it expires with the quarantine prefix
        )
        body = json.dumps(note, sort_keys=True).encode("utf-8")
        s3.put_object(Bucket=args.bucket, Key=reason_key, Body=body, ContentType="application/json")
    written = plan["csv"]
    if written is not None:
        key, body = written
        s3.put_object(Bucket=args.bucket, Key=key, Body=body, ContentType="text/csv")
    if plan.get("pairs_csv") is not None:
        written = write_pairs_csv(s3, args.bucket, *plan["pairs_csv"])

    def tag(key):
        s3.put_object_tagging(Bucket=args.bucket, Key=key, Tagging={"TagSet": [INGESTED_TAG]})

    with ThreadPoolExecutor(plan.get("tag_workers", 1)) as pool:
        list(pool.map(tag, plan["tag"]))
    return written


def run(s3, args, spread=False):
    """Process every raw object of the range; return the summary dict.

    The listing gives each object's size (sparing a HEAD request) and LastModified. Each object is read
    and assessed against the window it is listed under, then each window's writes are planned and made
    (see plan_window). With ``spread``, a long run reads and writes from several processes (see
    worker_processes), each with its own S3 client from the environment.
    """
    objects = list_raw_objects(s3, args)
    processes = worker_processes(len(objects)) if spread else 1
    results = _each(s3, args, _read_listed, objects, processes)
    by_window = {}
    for (_key, _size, slot, modified), outcome in zip(objects, results):  # noqa: B905 - no strict= on 3.9
        pair = outcome.pop("pair")
        by_window.setdefault((slot, pair or ""), []).append(dict(outcome, modified=modified))
    windows = sorted(by_window)
    plans = [plan_window(args, slot, by_window[(slot, pair)], pair) for slot, pair in windows]
    summary = {"window_start": slot_stamp(args.start), "objects": len(objects), "rows": 0}
    summary.update(quarantined=[], superseded=[])
    for plan in plans:
        for source_key, _copy, _reason, note in plan["quarantine"]:
            print("QUARANTINED {}: {}".format(quoted(source_key), note["reason"]))
            summary["quarantined"].append({"key": source_key, "reason": note["reason"]})
        if plan["superseded"]:
            for key in plan["superseded"]:
                used = quoted(plan["used"])
                print("SUPERSEDED in window {}: {} (by the newer {})".format(plan["window"], quoted(key), used))
                summary["superseded"].append({"window": plan["window"], "key": key, "by": plan["used"]})
    writes, other_pairs = [], {}
    for (slot, pair), plan in zip(windows, plans):  # noqa: B905 - no strict= on 3.9
        if pair and pair != args.pair:
            other_pairs.setdefault(slot, []).append(plan)
        else:
            writes.append(plan)
    tag_workers = MAX_WORKERS if len(other_pairs) == 1 else 1  # one window: tag its pairs' objects in parallel
    writes += [plan_pairs(args, slot, group, tag_workers) for slot, group in sorted(other_pairs.items())]
    written = [item for item in _each(s3, args, apply_plan, writes, processes) if item is not None]
    summary["rows"] = len(written)
    if args.end - args.start > timedelta(seconds=SLOT_SECONDS):
        summary["range_objects_key"] = write_range_objects(s3, args, written)
    return summary


def range_objects(written):
    """The JSON-lines body of a range's canonical objects: one ``{"body", "key"}`` line each, in key order."""
    lines = [json.dumps({"body": body.decode("utf-8"), "key": key}, sort_keys=True) for key, body in written]
    return "".join(line + "\n" for line in sorted(lines)).encode("utf-8")


def write_range_objects(s3, args, written):
    """Write every canonical object of this range run in one more object (after all of them, so it never
    names one that is not there yet); the bulk analysis reads it instead of one object per window."""
    key = range_objects_key(args.start, args.end, args.analysis_prefix)
    s3.put_object(Bucket=args.bucket, Key=key, Body=range_objects(written), ContentType="application/x-ndjson")
    return key


def worker_processes(objects, cpus=None):
    """How many processes a run over ``objects`` raw objects uses: 1 up to PROCESSES_ABOVE_OBJECTS,
    else one per CPU, at most MAX_PROCESSES."""
    if objects <= PROCESSES_ABOVE_OBJECTS:
        return 1
    return max(1, min(MAX_PROCESSES, cpus or os.cpu_count() or 1))


def _each(s3, args, task, items, processes):
    """``[task(s3, args, item) for item in items]``, in order, from MAX_WORKERS threads per process."""
    if processes <= 1 or len(items) < 2:
        return _threaded(s3, args, task, items)
    size = -(-len(items) // processes)
    chunks = [items[start : start + size] for start in range(0, len(items), size)]
    with ProcessPoolExecutor(len(chunks)) as pool:
        parts = pool.map(_in_process, [task] * len(chunks), [args] * len(chunks), chunks)
        return [result for part in parts for result in part]


def _threaded(s3, args, task, items):
    with ThreadPoolExecutor(MAX_WORKERS) as pool:
        return list(pool.map(lambda item: task(s3, args, item), items))


def _in_process(task, args, items):
    """One worker process's share: its own client (a client never crosses a process boundary)."""
    return _threaded(s3_client(), args, task, items)


def s3_client():
    """An S3 client from the environment, with one pooled connection per worker thread."""
    import boto3  # imported here so the pure functions above are usable without it
    from botocore.config import Config

    return boto3.client("s3", config=Config(max_pool_connections=MAX_WORKERS))


def _read_listed(s3, args, listed):
    """Read one listed object (an S3 error fails the run, to be retried) and assess it (never raises)."""
    key, size, slot, _modified = listed
    configured = [args.pair] + args.other_pairs
    pair, version = read_ingestion_key(key, slot, args.ingestion_prefix, args.pair) or (None, 1)
    if pair not in configured:
        if pair is None:
            reason = GRAMMAR_REFUSED
        else:
            reason = "key names pair {}, not one of the configured pairs ({})".format(pair, ", ".join(configured))
        return {"key": key, "row": None, "reasons": [reason], "format": "unknown", "pair": None, "version": version}
    try:
        data = read_bounded(s3, args.bucket, key, args.max_object_bytes, size)
    except Rejected as error:
        data = error
    return dict(assess(data, args, key, slot, pair), pair=pair, version=version)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    summary = run(s3_client(), args, spread=True)
    print("SUMMARY " + json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Raw objects to raw records: decoding, format detection by content, and the JSON, XML, delimited and
``key=value`` parsers. A raw record is a mapping of the producer's field names to its values; field names
are looked up in the alias file (``spellings``). Every refusal is a ``Rejected`` with a one-line reason."""

from __future__ import annotations

import csv
import io
import json
import re

import defusedxml.ElementTree as defused_etree
from defusedxml import DefusedXmlException

from include.price_pipeline.layout import SLOT_SECONDS

NUMERIC_FIELDS = ("open", "high", "low", "close", "volume", "quote_volume", "weighted_average")

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

_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_KEY = re.compile(r"(?<![^\s,;])([A-Za-z_][\w.-]*)[ \t]*[:=]")


class Rejected(Exception):
    """An object or record that cannot be trusted; ``str()`` is the one-line reason."""

    def __init__(self, reason, format_guess="unknown"):
        super().__init__(reason)
        self.format_guess = format_guess


def clip(value):
    """A short printable form of an input value for a reason line."""
    return repr(str(value)[:40])


def spellings(raw, aliases, field):
    """``[(spelling, value), ...]`` of every spelling of ``field`` present (and not empty) in ``raw``."""
    names = (field,) + tuple(name for name in aliases.get(field, ()) if name != field)
    return [(name, raw[name]) for name in names if raw.get(name) not in (None, "")]


# ---------------------------------------------------------------- decoding


def decode_text(data):
    """Bytes to text: UTF-8 (BOM optional) or UTF-16 with BOM; anything else is rejected, and so are control
    characters but tab and line breaks (binary data, or UTF-16 without its BOM read as UTF-8)."""
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
    """Detect the format of ``text`` by its content and return ``(format_name, [raw mapping, ...])``: XML
    (``<``), JSON (``{``, ``[``), key=value text when every line is a pair, else delimited. Which mappings are
    records is README's "Bad input"."""
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
    """The key of an envelope's payload, as ``data`` in ``{"data": {...}}``, or None; an envelope reporting an
    error (``{"error": "Invalid currency pair."}``) is rejected with its message."""
    error = mapping.get("error")
    if isinstance(error, (str, list)) and error:
        raise Rejected("producer reported an error: {}".format(clip(error)), "json")
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
            "kline open/close times {}/{} do not span one 5-minute candle".format(clip(opened), clip(closed)),
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

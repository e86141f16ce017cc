"""Raw records to validated canonical rows, and the canonical CSV: fields by alias, the weighted average's
basis, the plausibility checks, and ``records_of``, one raw object's rows and refusals."""

from __future__ import annotations

import csv
import io
import math
from datetime import datetime, timezone

from include.glue.price_glue.formats import NUMERIC_FIELDS, Rejected, clip, decode_text, parse_object, spellings
from include.glue.price_glue.numbers import Numbers, decimal_convention, read_timestamp
from include.price_pipeline.layout import CANONICAL_COLUMNS, CSV_COLUMNS, iso

PRICE_FIELDS = ("open", "high", "low", "close", "weighted_average")
VOLUME_FIELDS = ("volume", "quote_volume")
#: The field a record declares its weighted average's basis with (README "Key layout", canonical CSV): only
#: TYPICAL_PRICE asks for something; OUTPUT_BASES (the job's output read back) change nothing; others refuse.
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
#: Prices outside [MIN_PRICE, MAX_PRICE] are refused: wide enough for every listed pair (SHIB/BTC near
#: 3e-10, BTC/VND near 3e9), narrow enough that no change between two prices overflows (5e-324 or 1e300).
MIN_PRICE = 1e-10
MAX_PRICE = 1e10
#: Timestamps before this are refused (no crypto market data is older).
EARLIEST = datetime(2009, 1, 1, tzinfo=timezone.utc)


def normalize(raw, aliases, pair, source_key, source_format, decimal=None):
    """One raw mapping to a validated canonical row (keyed by CSV_COLUMNS but ``superseded``); ``decimal``: the
    object's decimal separator when its text numbers show one (decimal_convention)."""
    try:
        row = _canonical(raw, aliases, pair, Numbers(decimal, source_format))
        validate(row)
    except Rejected as error:
        raise Rejected(str(error), source_format) from None
    row["source_key"] = source_key
    row["source_format"] = source_format
    return row


def _field(raw, aliases, field, convert):
    """``convert(value)`` of the one value ``field`` has in ``raw`` (None when absent). Two spellings
    with values that convert differently (``"high"`` and ``"h"``) make the record ambiguous."""
    present = spellings(raw, aliases, field)
    if not present:
        return None
    values = [convert(value) for _name, value in present]
    for (name, value), converted in zip(present[1:], values[1:]):  # noqa: B905 - no strict= on 3.9
        if converted != values[0]:
            raise Rejected(
                "{} given twice with different values: {} {} and {} {}".format(
                    field, present[0][0], clip(present[0][1]), name, clip(value)
                )
            )
    return values[0]


def _canonical(raw, aliases, pair, numbers):
    """Pick and convert each canonical field; derive weighted_average only when no spelling of it is given:
    the typical price when the record declares that basis, else from the volumes, or the one price of a
    no-trade candle. ``weighted_average_basis`` says which: record, typical_price, volumes or no_trade."""
    moment = _field(raw, aliases, "timestamp", read_timestamp)
    if moment is None:
        raise Rejected("record has no timestamp field")
    if moment < EARLIEST:
        raise Rejected("timestamp {} is before {}: no market data that old".format(moment.isoformat(), EARLIEST.year))
    if moment.second or moment.microsecond or moment.minute % 5:
        raise Rejected("timestamp {} is not on a 5-minute boundary".format(moment.isoformat()))
    row = dict.fromkeys(CANONICAL_COLUMNS)
    row["timestamp"] = iso(moment)
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
                BASIS_FIELD, clip(value), TYPICAL_PRICE
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
                BASIS_FIELD, TYPICAL_PRICE, clip(given), clip(typical)
            )
        )
    return typical


def _no_trade(row):
    """A candle in which nothing traded: every volume given is 0 and open = high = low = close."""
    volumes = [row[field] for field in VOLUME_FIELDS if row[field] is not None]
    prices = [row[field] for field in ("open", "high", "low", "close")]
    return bool(volumes) and not any(volumes) and None not in prices and len(set(prices)) == 1


def _pair(named, configured):
    """Check that a record's pair names the pair its key is for (see pair_spellings); anything else is refused."""
    if not isinstance(named, str) or len(named) > 40 or not named.strip().isprintable():
        raise Rejected("pair is not a short text: {}".format(clip(named)))
    if named.strip().upper() not in pair_spellings(configured):
        raise Rejected("record names pair {}, not the configured {}".format(clip(named), configured))
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


#: Records one object may hold (a week of 5-minute candles): every record is normalized, so an object of
#: many (a 1 MiB CSV took 4.3 s) spent the job's time, shared by every pair of the window.
MAX_RECORDS = 2016


def records_of(data, args, key, pair, refused_times=None):
    """``(rows, problems)`` of one raw object's bytes: its valid canonical rows, and a one-line reason
    per refused record; Rejected (with its format guess) when no record in it can be used, or when it
    holds more than MAX_RECORDS. ``pair``: the pair the object's key is for. ``refused_times``, if given,
    gets the time of each refused record whose time reads (``YYYY-MM-DDTHH:MM:SSZ``)."""
    fmt = "unknown"
    try:
        fmt, raws = parse_object(decode_text(data), args.aliases)
        if len(raws) > MAX_RECORDS:
            raise Rejected("object holds {} records, over the cap of {} per object".format(len(raws), MAX_RECORDS))
        decimal = decimal_convention(raws, args.aliases)
    except Rejected as error:
        raise Rejected(str(error), error.format_guess if error.format_guess != "unknown" else fmt) from None
    rows, problems = [], []
    for index, raw in enumerate(raws):
        try:
            rows.append(normalize(raw, args.aliases, pair, key, fmt, decimal))
        except Rejected as error:
            problems.append("record {}: {}".format(index, error))
            if refused_times is not None:
                refused_times.append(_time_of(raw, args.aliases))
    if not rows:
        raise Rejected(one_line(problems) or "no record found", fmt)
    return rows, problems


def _time_of(raw, aliases):
    """A refused record's time as the CSV writes it, or None when it does not read."""
    try:
        moment = _field(raw, aliases, "timestamp", read_timestamp)
    except Rejected:
        return None
    return iso(moment) if moment else None


def one_line(reasons):
    """Several reasons as one line: the first three, and how many more there are."""
    line = "; ".join(reasons[:3])
    return line + "; and {} more".format(len(reasons) - 3) if len(reasons) > 3 else line

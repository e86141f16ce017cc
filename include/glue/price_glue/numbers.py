"""Numbers and times written as text: which separator is an object's decimal one, numbers that read one
way only, and timestamps (Unix seconds or milliseconds, ISO 8601 with an offset) as aware UTC."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

from include.glue.price_glue.formats import NUMERIC_FIELDS, Rejected, clip, spellings

#: Unix timestamps above this are milliseconds (1e11 seconds is the year 5138).
UNIX_MILLISECONDS_ABOVE = 1e11

#: Numbers and times are ASCII digits only (re.ASCII): Python reads "٣١٢٠" or "３１２０" as 3120, and their
#: separators would escape the ambiguity rule; any other script is "not a number".
_NUMBER_TEXT = re.compile(r"([+-]?)(\d[\d.,]*|[.,]\d+)((?:[eE][+-]?\d+)?)", re.ASCII)
_UNIX_TIME = re.compile(r"\d+(?:\.\d+)?", re.ASCII)
_ISO_TIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,6}))?)? ?([Zz]|[+-]\d\d:?\d\d)?", re.ASCII
)
_NON_FINITE = ("nan", "inf", "infinity")


def _number_shape(text):
    """``(digits, evidence, ambiguous)`` of a number written as text, or None: ``digits`` with a ``.`` point
    (None while ambiguous), ``evidence`` the decimal separator the text shows, ``ambiguous`` the separator of a
    value that reads two ways, 1000x apart (``3,120``: 3120 or 3.12)."""
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
            for _name, value in spellings(raw, aliases, field):
                shape = _number_shape(value.strip()) if isinstance(value, str) else None
                if shape and shape[1]:
                    shown.setdefault(shape[1], value)
    if len(shown) > 1:
        raise Rejected(
            "numbers use both '.' and ',' as decimal separator ({} and {})".format(clip(shown["."]), clip(shown[","]))
        )
    return next(iter(shown), None)


class Numbers:
    """Reads the numbers of one object: its decimal convention, and whether it is semicolon-delimited
    text (where a lone comma is the decimal separator: ``0,086`` and ``3,120`` read 0.086 and 3.12)."""

    def __init__(self, decimal, source_format):
        self.decimal = decimal
        self.semicolon = source_format.startswith("csv-semicolon")

    def read(self, value, field):
        """A JSON number or a number written as text, as a finite float; a value that could be read two
        ways, 1000x apart, is refused (never guessed)."""
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise Rejected("{} is not a number: {}".format(field, clip(value)))
        if isinstance(value, str):
            value = self._digits(value.strip(), field)
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            number = math.inf
        if not math.isfinite(number):
            raise Rejected("{} is not finite: {}".format(field, clip(value)))
        return number

    def _digits(self, text, field):
        if text.lstrip("+-").lower() in _NON_FINITE:
            raise Rejected("{} is not finite: {}".format(field, clip(text)))
        shape = _number_shape(text)
        if shape is None:
            raise Rejected("{} is not a number: {}".format(field, clip(text)))
        digits, _evidence, ambiguous = shape
        if ambiguous is None:
            return digits
        point = self._point(ambiguous)
        if point is None:
            raise Rejected(
                "{} {} is ambiguous: {!r} may be the decimal or the thousands separator".format(
                    field, clip(text), ambiguous
                )
            )
        whole, fraction = text.split(ambiguous)
        return whole + "." + fraction if point == ambiguous else whole + fraction

    def _point(self, ambiguous):
        """The decimal separator that settles a value with one ``ambiguous`` separator, or None (the rule is
        README's "Bad input": a lone comma outside semicolon text is never settled)."""
        if self.semicolon:
            if ambiguous == ",":
                return self.decimal or ","
            return self.decimal
        if ambiguous == ".":
            return "." if self.decimal in (None, ".") else None
        return None


def read_timestamp(value):
    """Unix seconds or milliseconds (a number or digits) or ISO 8601 with an offset, as aware UTC."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Rejected("timestamp not understood: {}".format(clip(value)))
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
        raise Rejected("timestamp out of range: {}".format(clip(value))) from None


def _from_iso(text):
    """ISO 8601 date and time with ``Z`` or a ``+hh:mm`` offset, as aware UTC (no offset: rejected)."""
    match = _ISO_TIME.fullmatch(text)
    if not match:
        raise Rejected("timestamp not understood: {}".format(clip(text)))
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if offset is None:
        raise Rejected("timestamp has no UTC offset: {}".format(clip(text)))
    try:
        zone = timezone.utc if offset.upper() == "Z" else _offset(offset)
        parts = [int(part) for part in (year, month, day, hour, minute, second or 0)]
        moment = datetime(*parts, int((fraction or "").ljust(6, "0")), tzinfo=zone)
        return moment.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise Rejected("timestamp is not a valid time: {}".format(clip(text))) from None


def _offset(text):
    """``+05:30`` or ``-0800`` as a fixed timezone."""
    sign = -1 if text[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(text[1:3]), minutes=int(text[-2:])))

"""Property tests: any valid record, written in any producer format, normalizes to the same canonical row.

The writers here are small and independent of the job: each renders records the way a producer would,
with field names drawn from the alias file, numbers as JSON numbers or text (with or without thousands
separators) and timestamps as unix seconds, milliseconds or ISO 8601 with an offset. Every record holds
exact 8-decimal prices, so the canonical values it must give are known without running the job.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from xml.sax.saxutils import escape, quoteattr

import boto3
import pytest
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from include.glue.price_glue import formats, job, numbers, s3io, validation
from include.price_pipeline import layout

ALIASES = json.loads(layout.FIELD_ALIASES_PATH.read_text())
PAIR = "ETH/USDT"
KEY = "crypto/01-data-ingestion/year=2026/month=11/day=25/20261125T1930Z.raw"
NUMERIC = ("open", "high", "low", "close", "volume", "quote_volume", "weighted_average")
POLONIEX_ORDER = ("timestamp", "high", "low", "open", "close", "volume", "quote_volume", "weighted_average")
PROPERTY = settings(max_examples=60, deadline=None)


@dataclass(frozen=True)
class Record:
    """A valid candle: exact decimals, volume = weighted_average * quote_volume (Poloniex semantics)."""

    slot: datetime
    pair: str | None
    values: dict[str, Decimal]
    explicit_vwap: bool

    def fields(self) -> tuple[str, ...]:
        """The canonical numeric fields a producer writes (weighted_average may be left to derivation)."""
        return tuple(field for field in NUMERIC if self.explicit_vwap or field != "weighted_average")

    def expected(self, source_format: str) -> dict:
        """The canonical row this record must normalize to."""
        row = {field: float(value) for field, value in self.values.items()}
        if not self.explicit_vwap:
            row["weighted_average"] = row["volume"] / row["quote_volume"]
        stamp = self.slot.strftime("%Y-%m-%dT%H:%M:%SZ")
        basis = "record" if self.explicit_vwap else "volumes"
        return {
            "timestamp": stamp,
            "pair": PAIR,  # a record may name the configured pair in any spelling; the row names it one way
            **row,
            "source_key": KEY,
            "source_format": source_format,
            "weighted_average_basis": basis,
        }


@dataclass(frozen=True)
class Style:
    """How a producer spells a record: field names, number form, timestamp form."""

    names: dict[str, str]
    numbers: str  # "json", "text" or "thousands"
    stamps: str  # "seconds", "milliseconds", "text", "iso-z" or "iso-offset"
    offset_minutes: int

    def number(self, value: Decimal) -> float | str:
        if self.numbers == "json":
            return float(value)
        return format(value, ",f" if self.numbers == "thousands" else "f")

    def stamp(self, slot: datetime) -> int | str:
        seconds = int(slot.timestamp())
        if self.stamps in ("seconds", "milliseconds", "text"):
            value = seconds * 1000 if self.stamps == "milliseconds" else seconds
            return str(value) if self.stamps == "text" else value
        if self.stamps == "iso-z":
            return f"{slot:%Y-%m-%dT%H:%M:%S}Z"
        hours, minutes = divmod(abs(self.offset_minutes), 60)
        sign = "-" if self.offset_minutes < 0 else "+"
        local = slot + timedelta(minutes=self.offset_minutes)
        return f"{local:%Y-%m-%dT%H:%M:%S}{sign}{hours:02d}:{minutes:02d}"

    def pairs(self, record: Record) -> list[tuple[str, object]]:
        """The record as ``(spelling, value)`` pairs, timestamp first, then pair, then numbers."""
        out = [(self.names["timestamp"], self.stamp(record.slot))]
        if record.pair:
            out.append((self.names["pair"], record.pair))
        return out + [(self.names[field], self.number(record.values[field])) for field in record.fields()]


PRICE = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("99999.99999999"), places=8)
QUOTE_VOLUME = st.decimals(min_value=Decimal(0), max_value=Decimal("1000000"), places=8)
SLOT_INDEX = st.integers(min_value=1262304000 // 300, max_value=2524608000 // 300)  # 2010 to 2050


@st.composite
def records(draw, traded: bool = False) -> Record:
    """A valid record; ``traded`` forces a positive quote volume (so weighted_average is derivable)."""
    low, high = sorted((draw(PRICE), draw(PRICE)))
    inside = st.decimals(min_value=low, max_value=high, places=8)
    vwap = draw(inside)
    quote_volume = draw(QUOTE_VOLUME.filter(lambda v: v > 0) if traded else QUOTE_VOLUME)
    values = {
        "open": draw(inside),
        "high": high,
        "low": low,
        "close": draw(inside),
        "volume": vwap * quote_volume,
        "quote_volume": quote_volume,
        "weighted_average": vwap,
    }
    explicit_vwap = quote_volume == 0 or draw(st.booleans())
    pair = draw(st.sampled_from([None, "ETH/USDT", "ETHUSDT", "eth-usdt", "USDT_ETH", "eth_usdt"]))
    slot = datetime.fromtimestamp(draw(SLOT_INDEX) * 300, UTC)
    return Record(slot, pair, values, explicit_vwap)


@st.composite
def styles(draw) -> Style:
    fields = ("timestamp", "pair", *NUMERIC)
    names = {field: draw(st.sampled_from((field, *ALIASES[field]))) for field in fields}
    number_style = draw(st.sampled_from(("json", "text", "thousands")))
    stamps = draw(st.sampled_from(("seconds", "milliseconds", "text", "iso-z", "iso-offset")))
    return Style(names, number_style, stamps, draw(st.integers(-12 * 4, 14 * 4)) * 15)


def normalize_object(text: str | bytes) -> tuple[str, list[dict], list[str]]:
    """Decode, detect and normalize one raw object: (format, canonical rows, reasons of skipped records)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    fmt, raws = formats.parse_object(formats.decode_text(data), ALIASES)
    decimal = numbers.decimal_convention(raws, ALIASES)
    rows, skipped = [], []
    for raw in raws:
        try:
            rows.append(validation.normalize(raw, ALIASES, PAIR, KEY, fmt, decimal))
        except formats.Rejected as error:
            skipped.append(str(error))
    return fmt, rows, skipped


def assert_normalizes(text: str | bytes, fmt: str, recs: list[Record]) -> None:
    assert normalize_object(text) == (fmt, [record.expected(fmt) for record in recs], [])


# ---------------------------------------------------------------- the writers


def as_text(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def write_json(pairs: list) -> str:
    return json.dumps(dict(pairs))


def write_xml_elements(pairs: list, prefix: str) -> str:
    fields = "".join(f"<{prefix}{name}>{escape(as_text(value))}</{prefix}{name}>" for name, value in pairs)
    return f"<{prefix}record>{fields}</{prefix}record>"


def write_xml_attributes(pairs: list, prefix: str) -> str:
    attributes = " ".join(f"{prefix}{name}={quoteattr(as_text(value))}" for name, value in pairs)
    return f"<{prefix}record {attributes}/>"


def xml_document(body: str, prefix: str) -> str:
    namespace = f' xmlns:{prefix[:-1]}="urn:example:prices"' if prefix else ""
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{prefix}records{namespace}>{body}</{prefix}records>\n'


def write_delimited(header: list, rows: list[list], delimiter: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    if header:
        writer.writerow(header)
    writer.writerows([as_text(value) for value in row] for row in rows)
    return out.getvalue()


def write_key_value(pairs: list, separator: str, joiner: str) -> str:
    return joiner.join(f"{name}{separator}{as_text(value)}" for name, value in pairs) + "\n"


def write_kline(record: Record, style: Style) -> list:
    """A Binance kline: base-asset volume at 5 (our quote_volume), quote-asset volume at 7 (our volume)."""
    opened = int(record.slot.timestamp()) * 1000
    values = record.values
    prices = [style.number(values[field]) for field in ("open", "high", "low", "close", "quote_volume")]
    return [opened, *prices, opened + 299_999, style.number(values["volume"]), 42, "0", "0", "0"]


# ---------------------------------------------------------------- round trips


@PROPERTY
@given(records(), styles(), st.sampled_from(formats.WRAPPER_KEYS), st.booleans())
def test_json_object_and_envelope(record, style, wrapper, wrapped):
    document = {wrapper: dict(style.pairs(record))} if wrapped else dict(style.pairs(record))
    assert_normalizes(
        json.dumps(document, indent=2 if wrapped else None), "json-nested" if wrapped else "json", [record]
    )


@PROPERTY
@given(st.lists(records(), min_size=1, max_size=4), styles())
def test_json_array(recs, style):
    assert_normalizes(json.dumps([dict(style.pairs(record)) for record in recs]), "json-array", recs)


@PROPERTY
@given(st.lists(records(), min_size=2, max_size=4), styles())
def test_ndjson(recs, style):
    assert_normalizes("\n".join(write_json(style.pairs(record)) for record in recs) + "\n", "ndjson", recs)


@PROPERTY
@given(st.lists(records(), min_size=1, max_size=3), styles(), st.sampled_from(("", "p:")), st.booleans())
def test_xml_element_and_attribute_styles(recs, style, prefix, attributes):
    write = write_xml_attributes if attributes else write_xml_elements
    body = "".join(write(style.pairs(record), prefix) for record in recs)
    assert_normalizes(xml_document(body, prefix), "xml", recs)


@PROPERTY
@given(records(), styles(), st.randoms(use_true_random=False), st.sampled_from(formats.DELIMITERS))
def test_delimited_with_header_in_any_column_order(record, style, random, delimiter_and_format):
    delimiter, fmt = delimiter_and_format
    pairs = style.pairs(record)
    random.shuffle(pairs)
    text = write_delimited([name for name, _ in pairs], [[value for _, value in pairs]], delimiter)
    assert_normalizes(text, fmt, [record])


@PROPERTY
@given(st.lists(records(), min_size=1, max_size=3), styles(), st.sampled_from(formats.DELIMITERS))
def test_headerless_in_poloniex_order(recs, style, delimiter_and_format):
    delimiter, fmt = delimiter_and_format
    rows = [
        [style.stamp(record.slot)]
        + [style.number(record.values[field]) if field in record.fields() else "" for field in POLONIEX_ORDER[1:]]
        for record in recs
    ]
    assert_normalizes(write_delimited([], rows, delimiter), fmt + "-headerless", recs)


@PROPERTY
@given(records(), styles(), st.sampled_from(("=", ": ", " = ")), st.sampled_from(("\n", " ", ", ", "; ")))
def test_key_value_text(record, style, separator, joiner):
    assert_normalizes(write_key_value(style.pairs(record), separator, joiner), "text-kv", [record])


@PROPERTY
@given(st.lists(records(traded=True), min_size=1, max_size=3), styles(), st.booleans())
def test_binance_klines(recs, style, single):
    derived = [Record(record.slot, None, record.values, explicit_vwap=False) for record in recs]
    klines = [write_kline(record, style) for record in recs]
    text = json.dumps(klines[0] if single else klines)
    assert_normalizes(text, "binance-kline", derived[:1] if single else derived)


@PROPERTY
@given(records(), styles())
def test_canonical_csv_is_itself_valid_input(record, style):
    """The job's own output, fed back, gives the same row: nothing is lost or reshaped in to_csv."""
    (row,) = normalize_object(write_json(style.pairs(record)))[1]
    (again,) = normalize_object(validation.to_csv(row))[1]
    assert again == {**row, "source_format": "csv", "weighted_average_basis": "record"}


# ---------------------------------------------------------------- nothing but Rejected


def accepted_or_rejected(data: bytes) -> list[dict]:
    """Rows of ``data``, or none when it is rejected; any other exception fails the test."""
    try:
        return normalize_object(data)[1]
    except formats.Rejected as error:
        reason = str(error)
    assert reason
    assert "\n" not in reason
    return []


@PROPERTY
@given(st.binary(max_size=600))
def test_arbitrary_bytes_are_accepted_or_rejected_never_crash(data):
    for row in accepted_or_rejected(data):
        validation.validate(row)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='{}[]<>"=:,;\t\n .0123456789eE+-TZdatehiglowpqrsvx/!&#%', max_size=300))
def test_format_shaped_noise_is_accepted_or_rejected_never_crash(text):
    for row in accepted_or_rejected(text.encode("utf-8")):
        validation.validate(row)


@PROPERTY
@given(records(), styles(), st.sampled_from(("json", "xml", "csv", "kv")), st.data())
def test_truncated_valid_objects_never_crash_nor_give_an_invalid_row(record, style, fmt, data):
    pairs = style.pairs(record)
    text = {
        "json": write_json(pairs),
        "xml": xml_document(write_xml_elements(pairs, ""), ""),
        "csv": write_delimited([name for name, _ in pairs], [[value for _, value in pairs]], ","),
        "kv": write_key_value(pairs, "=", "\n"),
    }[fmt]
    cut = data.draw(st.integers(min_value=0, max_value=len(text)))
    for row in accepted_or_rejected(text[:cut].encode("utf-8")):
        validation.validate(row)


# ---------------------------------------------------------------- the window contract


class RecordingS3:
    """The S3 calls apply_plan makes, recorded: which keys it writes (it has no other call to make)."""

    #: botocore's model of S3 as a real client holds it: the job asks it which parameters PutObject takes.
    meta = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x").meta

    def __init__(self):
        self.written = []

    def copy_object(self, Bucket, Key, CopySource):  # noqa: N803 - boto3's names
        self.written.append(Key)

    def put_object(self, Bucket, Key, Body, ContentType, **condition):  # noqa: N803
        self.written.append(Key)

    def get_object(self, Bucket, Key):  # noqa: N803 - nothing is written yet
        raise ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject")


CONTRACT_ARGS = SimpleNamespace(
    bucket="b",
    aliases=ALIASES,
    pairs=[PAIR],
    analysis_prefix=layout.ANALYSIS_PREFIX,
    quarantine_prefix=layout.QUARANTINE_PREFIX,
)
#: Where a record of an object under window W may claim to be: W itself, near it, far from it, implausible.
SLOT_OFFSETS = st.sampled_from([0, 0, 0, -1, 1, -288, 288 * 3, -(10**6), 10**7])


@st.composite
def contract_objects(draw, window: datetime) -> tuple[str, bytes]:
    """``(key, bytes)`` of an object listed under ``window``: records of any slot, pair and shape."""
    recs = []
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        record = draw(records())
        offset = draw(SLOT_OFFSETS)
        slot = window + timedelta(minutes=5 * offset)
        pair = draw(st.sampled_from([None, PAIR, "eth_usdt", "BTC/USDT", "<!channel>"]))
        recs.append(Record(slot, pair, record.values, record.explicit_vwap))
    style = draw(styles())
    shape = draw(st.sampled_from(["json-array", "ndjson", "csv", "noise"]))
    if shape == "noise" or not recs:
        data = draw(st.binary(max_size=200))
    elif shape == "csv":
        fields = ["timestamp", *NUMERIC]
        rows = [[style.stamp(r.slot), *(style.number(r.values[f]) for f in NUMERIC)] for r in recs]
        data = write_delimited([style.names[f] for f in fields], rows, ",").encode()
    else:
        docs = [dict(style.pairs(record)) for record in recs]
        data = (json.dumps(docs) if shape == "json-array" else "\n".join(map(json.dumps, docs)) + "\n").encode()
    suffix = draw(st.text(max_size=30))
    return layout.ingestion_window_prefix(window, layout.INGESTION_PREFIX) + suffix, data


def version(key: str, window: datetime) -> int:
    """The version the job gives a listed key (1 outside the grammar: such a key is never read)."""
    return (layout.read_ingestion_key(key, window, layout.INGESTION_PREFIX, PAIR) or (None, 1))[1]


def test_an_older_record_behind_two_of_unknown_order_is_quarantined_with_them_not_dropped():
    """Hypothesis found it: the older record was neither used, superseded nor quarantined (Terraform expires
    raw objects)."""
    window = datetime(2010, 1, 1, tzinfo=UTC)
    prefix = layout.ingestion_window_prefix(window, layout.INGESTION_PREFIX)
    body = json.dumps([{"timestamp": int(window.timestamp()), "open": 1, "high": 1, "low": 1, "close": 1,
                        "volume": 0, "quote_volume": 0, "weighted_average": 1}]).encode()  # fmt: skip
    modified = {f"{prefix}.json": "2026-01-01T00:00:00Z", f"{prefix}-a.json": "2026-01-01T00:00:01Z",
                f"{prefix}-b.json": "2026-01-01T00:00:01Z"}  # fmt: skip
    outcomes = [dict(job.assess(body, CONTRACT_ARGS, key, window, PAIR), modified=when, version=1)
                for key, when in modified.items()]  # fmt: skip

    plan = job.plan_window(CONTRACT_ARGS, window, outcomes, PAIR)

    assert plan["used"] is None
    reasons = {source: note["reason"] for source, _, _, note in plan["quarantine"]}
    assert sorted(reasons) == sorted(modified)
    assert reasons[f"{prefix}.json"].startswith("older than the window's newest records; 2 objects of window")


def _outcomes(window: datetime, objects: dict[str, bytes]) -> list[dict]:
    return [dict(job.assess(body, CONTRACT_ARGS, key, window, PAIR), modified="2026-01-01T00:00:00Z",
                 version=version(key, window)) for key, body in objects.items()]  # fmt: skip


def _record(window: datetime, weighted_average) -> dict:
    return {"timestamp": int(window.timestamp()), "open": 3000, "high": 3200, "low": 2900, "close": 3100,
            "volume": 1, "quote_volume": 0.0003, "weighted_average": weighted_average}  # fmt: skip


def test_a_refused_correction_is_not_replaced_by_the_record_it_corrects():
    """Issue 35: a refused -v3 ("3,120": which separator is the decimal one is unknown) had the job use -v2
    silently; the window now has no record of the pair (late, with the reason) and both are quarantined."""
    window = datetime(2026, 1, 1, tzinfo=UTC)
    prefix = layout.ingestion_window_prefix(window, layout.INGESTION_PREFIX) + "/" + layout.pair_slug(PAIR)
    objects = {f"{prefix}-v2.json": json.dumps(_record(window, 3100)).encode(),
               f"{prefix}-v3.json": json.dumps(_record(window, "3,120")).encode()}  # fmt: skip

    plan = job.plan_window(CONTRACT_ARGS, window, _outcomes(window, objects), PAIR)

    assert plan["used"] is None
    reasons = {source: note["reason"] for source, _, _, note in plan["quarantine"]}
    assert reasons[f"{prefix}-v2.json"] == (
        f'the window\'s correction "{prefix}-v3.json" (version 3) was refused: none is used'
    )
    assert f"{prefix}-v3.json" in reasons


def test_an_object_with_two_records_of_the_window_one_refused_uses_neither():
    window = datetime(2026, 1, 1, tzinfo=UTC)
    key = layout.ingestion_window_prefix(window, layout.INGESTION_PREFIX) + "/" + layout.pair_slug(PAIR) + ".json"
    body = json.dumps([_record(window, 3100), _record(window, "NaN")]).encode()

    [outcome] = _outcomes(window, {key: body})

    assert outcome["row"] is None
    assert (
        "2 records of window 2026-01-01T00:00:00Z in one object, 1 of them refused: none is used" in outcome["reasons"]
    )


def test_an_object_of_more_records_than_the_cap_is_refused_before_they_are_normalized():
    """Issue 35: a 1 MiB CSV cost the job 4.3 s of CPU, shared by every pair of the window."""
    window = datetime(2026, 1, 1, tzinfo=UTC)
    rows = "\n".join(f"{int(window.timestamp()) - 300 * i},3100,3200,3000,3050,1,0.0003,3100" for i in range(3000))
    body = ("date,high,low,open,close,volume,quoteVolume,weightedAverage\n" + rows).encode()

    with pytest.raises(validation.Rejected, match="object holds 3000 records, over the cap of 2016 per object"):
        validation.records_of(body, CONTRACT_ARGS, "k", PAIR)


@settings(max_examples=150, deadline=None)
@given(st.data(), SLOT_INDEX)
def test_any_objects_under_a_window_write_at_most_its_csv_and_their_quarantine_copies(data, slot_index):
    window = datetime.fromtimestamp(slot_index * 300, UTC)
    objects = dict(data.draw(st.lists(contract_objects(window), min_size=1, max_size=4)))
    modified = {key: data.draw(st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z"])) for key in objects}
    outcomes = [
        dict(job.assess(body, CONTRACT_ARGS, key, window, PAIR), modified=modified[key], version=version(key, window))
        for key, body in objects.items()
    ]

    plan = job.plan_window(CONTRACT_ARGS, window, outcomes, PAIR)
    s3 = RecordingS3()
    written = s3io.apply_plan(s3, CONTRACT_ARGS, job.plan_pairs(CONTRACT_ARGS, window, [plan]))

    allowed = {layout.analysis_key(window)} | {k for key in objects for k in layout.quarantine_keys(window, key)}
    assert set(s3.written) <= allowed
    quarantined = {source for source, *_ in plan["quarantine"]}
    for key in objects:  # nothing is dropped silently: each object gave the CSV, was superseded or quarantined
        assert key == plan["used"] or key in plan["superseded"] or key in quarantined
    candidates = sorted(((o["version"], modified[o["key"]]), o["key"]) for o in outcomes if o["row"] is not None)
    newest = [key for order, key in candidates if order == candidates[-1][0]]
    corrected = candidates and any(o["row"] is None and o["version"] > candidates[-1][0][0] for o in outcomes)
    if written is None:  # no candidate, two of the same version and second, or a refused correction
        assert plan["used"] is None
        assert len(newest) != 1 or corrected
        return
    assert not corrected
    [row] = csv.DictReader(io.StringIO(written[1].decode()))
    assert (row["timestamp"], row["pair"]) == (window.strftime("%Y-%m-%dT%H:%M:%SZ"), PAIR)
    assert [row["source_key"]] == newest  # the highest version, then the newest second, and only it
    assert json.loads(row["superseded"] or "[]") == [key for _, key in candidates[:-1]]


@settings(max_examples=100, deadline=None)
@given(st.data(), SLOT_INDEX)
def test_any_other_pairs_objects_of_a_window_write_one_shared_csv_with_a_row_per_pair_that_has_a_record(
    data, slot_index
):
    window = datetime.fromtimestamp(slot_index * 300, UTC)
    prefix = layout.ingestion_window_prefix(window, layout.INGESTION_PREFIX)
    chosen = data.draw(st.lists(st.sampled_from(["BTC/USDT", "SOL/USDT", "ETH/BTC"]), min_size=1, unique=True))
    plans, objects = [], []
    for pair in chosen:
        drawn = data.draw(st.lists(contract_objects(window), min_size=1, max_size=3))
        listed = {f"{prefix}/{layout.pair_slug(pair)}{key[len(prefix) :]}": body for key, body in drawn}
        outcomes = [
            dict(
                job.assess(body, CONTRACT_ARGS, key, window, pair),
                modified="2026-01-01T00:00:00Z",
                version=version(key, window),
            )
            for key, body in listed.items()
        ]
        plans.append(job.plan_window(CONTRACT_ARGS, window, outcomes, pair))
        objects += listed

    plan = job.plan_pairs(CONTRACT_ARGS, window, plans)
    s3 = RecordingS3()
    written = s3io.apply_plan(s3, CONTRACT_ARGS, plan)

    allowed = {layout.analysis_key(window)} | {k for key in objects for k in layout.quarantine_keys(window, key)}
    assert set(s3.written) <= allowed
    with_record = sorted(pair for pair, one in zip(chosen, plans, strict=True) if one["used"] is not None)
    if not with_record:
        assert written is None
        return
    rows = list(csv.DictReader(io.StringIO(written[1].decode())))
    assert [row["pair"] for row in rows] == with_record  # one row per pair, by pair
    for row, pair in zip(rows, with_record, strict=True):
        assert row["timestamp"] == window.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert row["source_key"].startswith(f"{prefix}/{layout.pair_slug(pair)}")


# ---------------------------------------------------------------- records nested at any depth (issue 21)

#: The outer record's weighted average; every nested record holds another price.
OUTER_PRICE = 3000.0
NEST_KEYS = st.sampled_from(["data", "result", "source", "prev", "meta", "items", "x"])


@st.composite
def nested_json(draw, window):
    """A JSON record of ``window`` (price OUTER_PRICE) with records of other prices nested at any depth
    in it, in envelopes and lists, of the same window or a near one."""
    stamp = int(window.timestamp())

    def inner():
        offset = draw(st.sampled_from([0, 0, 300, -300]))
        price = draw(st.sampled_from([9000.0, 3.0, 2999.0, 0.5]))
        return {"date": stamp + offset, draw(st.sampled_from(["weightedAverage", "price", "close"])): price}

    def wrap(value, depth):
        for _ in range(depth):
            value = draw(st.sampled_from([{draw(NEST_KEYS): value}, [value], {"note": "n", draw(NEST_KEYS): value}]))
        return value

    outer = {"date": stamp, "weightedAverage": OUTER_PRICE, "high": 3010.0, "low": 2990.0}
    for _ in range(draw(st.integers(1, 3))):
        outer[draw(st.sampled_from(["data", "source", "prev", "extra"]))] = wrap(inner(), draw(st.integers(0, 12)))
    document = outer
    for _ in range(draw(st.integers(0, 2))):  # the whole record may sit in envelopes too
        document = {draw(st.sampled_from(["data", "result"])): document}
    return json.dumps(document).encode()


@st.composite
def nested_xml(draw, window):
    """An XML record of ``window`` with records nested in child elements (element or attribute style)."""
    iso = window.strftime("%Y-%m-%dT%H:%M:%SZ")

    def inner():
        price = draw(st.sampled_from(["9000", "3", "2999"]))
        if draw(st.booleans()):
            return f'<prev date="{iso}" weightedAverage="{price}"/>'
        return f"<source><date>{iso}</date><weightedAverage>{price}</weightedAverage></source>"

    children = []
    for _ in range(draw(st.integers(1, 3))):
        text = inner()
        for _ in range(draw(st.integers(0, 5))):
            tag = draw(st.sampled_from(["data", "meta", "x"]))
            text = f"<{tag}>{text}</{tag}>"
        children.append(text)
    fields = f"<date>{iso}</date><weightedAverage>3000</weightedAverage><high>3010</high><low>2990</low>"
    position = draw(st.integers(0, len(children)))
    body = "".join(children[:position]) + fields + "".join(children[position:])
    return f"<response><candle>{body}</candle></response>".encode()


@settings(max_examples=300, deadline=None)
@given(st.data(), SLOT_INDEX, st.sampled_from(["json", "xml"]))
def test_a_record_with_records_nested_at_any_depth_writes_the_outer_price_or_nothing(data, slot_index, fmt):
    """The job writes the outer record's price or quarantines the object: never an inner value."""
    window = datetime.fromtimestamp(slot_index * 300, UTC)
    body = data.draw(nested_json(window) if fmt == "json" else nested_xml(window))
    key = layout.ingestion_key(window, "." + fmt, pair=PAIR)
    outcome = dict(job.assess(body, CONTRACT_ARGS, key, window, PAIR), modified="2026-01-01T00:00:00Z", version=1)

    plan = job.plan_window(CONTRACT_ARGS, window, [outcome], PAIR)

    if plan["row"] is None:
        assert [source for source, *_ in plan["quarantine"]] == [key]  # refused, with its reason
        return
    row = plan["row"]
    assert float(row["weighted_average"]) == OUTER_PRICE

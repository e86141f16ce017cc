"""The Glue job's parsing part on the corpus of valid producer formats and on the real Poloniex data.

Each file in ``tests/data/formats/valid/`` sits beside ``<name>.expected.json``: the canonical rows
(without ``source_key``) that detecting and normalizing the file must give, and the reasons of any
record in it that must be skipped. The expected values are written out by hand, not produced by the job.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from include.glue.price_glue import formats, numbers, validation
from include.price_pipeline import layout

ROOT = Path(__file__).resolve().parents[2]
VALID = ROOT / "tests" / "data" / "formats" / "valid"
POLONIEX_5M_CSV = ROOT / "tests" / "data" / "poloniex" / "poloniex_BTC_ETH_5m_2017-07-14_2017-08-09.csv"
ALIASES = json.loads(layout.FIELD_ALIASES_PATH.read_text())
PAIR = "ETH/USDT"
KEY = "crypto/01-data-ingestion/year=2017/month=07/day=14/20170714T0240Z.raw"
EVERY_FORMAT = {
    "json",
    "json-nested",
    "json-array",
    "ndjson",
    "xml",
    "csv",
    "csv-headerless",
    "tsv",
    "tsv-headerless",
    "csv-semicolon",
    "text-kv",
    "binance-kline",
}


def corpus_inputs(folder: Path) -> list[Path]:
    """The input files of a corpus folder (every file but the ``.expected.json`` sidecars)."""
    return sorted(path for path in folder.iterdir() if not path.name.endswith(".expected.json"))


def sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".expected.json").read_text())


def normalize_object(data: bytes, aliases: dict = ALIASES, pair: str = PAIR) -> tuple[str, list[dict], list[str]]:
    """Decode, detect and normalize one raw object: (format, canonical rows, reasons of skipped records)."""
    fmt, raws = formats.parse_object(formats.decode_text(data), aliases)
    decimal = numbers.decimal_convention(raws, aliases)
    rows, skipped = [], []
    for raw in raws:
        try:
            rows.append(validation.normalize(raw, aliases, pair, KEY, fmt, decimal))
        except formats.Rejected as error:
            skipped.append(str(error))
    return fmt, rows, skipped


def normalize_record(record: dict) -> dict:
    """One JSON-style record through ``normalize``."""
    return validation.normalize(record, ALIASES, PAIR, KEY, "json")


# ---------------------------------------------------------------- the valid corpus


def test_valid_corpus_has_25_variants_each_with_its_expected_rows():
    inputs = corpus_inputs(VALID)
    assert len(inputs) >= 25
    assert all(sidecar(path)["rows"] for path in inputs)


def test_valid_corpus_covers_every_format():
    found = {row["source_format"] for path in corpus_inputs(VALID) for row in sidecar(path)["rows"]}
    assert found == EVERY_FORMAT


@pytest.mark.parametrize("path", corpus_inputs(VALID), ids=lambda path: path.name)
def test_valid_variant_gives_exactly_its_expected_rows(path):
    expected = sidecar(path)
    fmt, rows, skipped = normalize_object(path.read_bytes(), pair=expected.get("pair", PAIR))
    assert rows == [{**row, "source_key": KEY} for row in expected["rows"]]
    assert {row["source_format"] for row in rows} == {fmt}
    assert len(skipped) == len(expected.get("skipped", []))
    for reason, wanted in zip(skipped, expected.get("skipped", []), strict=True):
        assert wanted in reason


@pytest.mark.parametrize("path", corpus_inputs(VALID), ids=lambda path: path.name)
def test_canonical_csv_is_deterministic_and_round_trips(path):
    pair = sidecar(path).get("pair", PAIR)
    _, first, _ = normalize_object(path.read_bytes(), pair=pair)
    _, second, _ = normalize_object(path.read_bytes(), pair=pair)
    for row, again in zip(first, second, strict=True):
        written = validation.to_csv(row)
        assert written == validation.to_csv(again)
        header, line = list(csv.reader(io.StringIO(written.decode("utf-8"))))
        assert tuple(header) == layout.CSV_COLUMNS
        back = dict(zip(header, line, strict=True))
        for column in formats.NUMERIC_FIELDS:
            assert (float(back[column]) if back[column] else None) == row[column]
        assert back["timestamp"] == row["timestamp"]


# ---------------------------------------------------------------- alias file: schema drift is data


def test_alias_file_keeps_each_field_on_one_line():
    """Adding a producer's spelling stays a one-line change of field_aliases.json."""
    lines = layout.FIELD_ALIASES_PATH.read_text().splitlines()
    for field, spellings in ALIASES.items():
        (line,) = [line for line in lines if line.strip().startswith(json.dumps(field) + ":")]
        assert json.loads(line.split(":", 1)[1].strip().rstrip(",")) == spellings


def test_alias_file_names_every_canonical_field_and_gives_no_spelling_two_meanings():
    assert set(formats.NUMERIC_FIELDS) | {"timestamp", "pair"} == set(ALIASES)
    spellings = [spelling for names in ALIASES.values() for spelling in names]
    assert len(spellings) == len(set(spellings))


def test_explicit_weighted_average_spellings_come_before_price():
    names = ALIASES["weighted_average"]
    assert names.index("price") > max(names.index("weightedAverage"), names.index("vwap"))


def test_a_new_producer_spelling_needs_only_the_alias_file():
    record = b'{"px_time": "2017-07-14T02:40:00Z", "px_vwap": "0.0864", "high": 0.0866, "low": 0.0862}'
    _, rows, skipped = normalize_object(record)
    assert rows == []
    assert skipped == ["record has no timestamp field"]
    drifted = {field: list(names) for field, names in ALIASES.items()}
    drifted["timestamp"].append("px_time")
    drifted["weighted_average"].append("px_vwap")
    _, rows, skipped = normalize_object(record, drifted)
    assert skipped == []
    assert (rows[0]["timestamp"], rows[0]["weighted_average"]) == ("2017-07-14T02:40:00Z", 0.0864)


# ---------------------------------------------------------------- timestamps and numbers


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        (1500000000, "2017-07-14T02:40:00Z"),
        (1500000000.0, "2017-07-14T02:40:00Z"),
        ("1500000000", "2017-07-14T02:40:00Z"),
        (1500000000000, "2017-07-14T02:40:00Z"),
        ("1500000000000", "2017-07-14T02:40:00Z"),
        ("2017-07-14T02:40:00Z", "2017-07-14T02:40:00Z"),
        ("2017-07-14T02:40:00.000z", "2017-07-14T02:40:00Z"),
        ("2017-07-14 02:40+00:00", "2017-07-14T02:40:00Z"),
        ("2017-07-13T22:40:00-04:00", "2017-07-14T02:40:00Z"),
        ("2017-07-14T08:10:00+0530", "2017-07-14T02:40:00Z"),
    ],
)
def test_timestamp_spellings_name_the_same_slot(stamp, expected):
    row = normalize_record({"date": stamp, "weightedAverage": 1})
    assert row["timestamp"] == expected


@pytest.mark.parametrize(
    ("stamp", "reason"),
    [
        ("2017-07-14T02:40:00", "timestamp has no UTC offset"),
        ("14/07/2017 02:40", "timestamp not understood"),
        ("2017-07-14T02:40:00+25:00", "timestamp is not a valid time"),
        (-300, "timestamp out of range"),
        (10**30, "timestamp out of range"),
        (1500000000123, "not on a 5-minute boundary"),
        ([1500000000], "timestamp not understood"),
    ],
)
def test_timestamp_that_names_no_slot_is_rejected(stamp, reason):
    with pytest.raises(formats.Rejected, match=reason):
        normalize_record({"date": stamp, "weightedAverage": 1})


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3,120.55", 3120.55),
        ("1,233,214.125", 1233214.125),
        (" 42 ", 42.0),
        ("1e3", 1000.0),
        (".5", 0.5),
        (7, 7.0),
    ],
)
def test_numbers_as_json_numbers_or_text_with_thousands_separators(text, value):
    row = normalize_record({"date": 1500000000, "high": text, "weightedAverage": 0.1})
    assert row["high"] == value


@pytest.mark.parametrize("text", ["1_000", "3,12,0.55", "0x10", "1.2.3", "3.120,5.5", "one", True])
def test_number_text_that_is_no_number_is_rejected(text):
    with pytest.raises(formats.Rejected, match="high is not a number"):
        normalize_record({"date": 1500000000, "high": text, "weightedAverage": 0.1})


@pytest.mark.parametrize(
    ("text", "value"),
    [("12,34", 12.34), ("0,086", 0.086), ("3.120,55", 3120.55), ("1.233.214", 1233214.0), ("1234,5", 1234.5)],
)
def test_a_comma_decimal_that_reads_only_one_way_is_read(text, value):
    assert normalize_record({"date": 1500000000, "high": text, "weightedAverage": 0.01})["high"] == value


@pytest.mark.parametrize("text", ["3,120", "100,000", "-3,120"])
def test_a_lone_comma_that_reads_two_ways_1000x_apart_is_refused_outside_semicolon_text(text):
    with pytest.raises(formats.Rejected, match="is ambiguous"):
        normalize_record({"date": 1500000000, "high": text, "weightedAverage": 0.01})


@pytest.mark.parametrize(
    ("text", "values"),
    [
        # A lone comma in semicolon text is the decimal separator ...
        ("date;high;weightedAverage\n1500000000;3,120;3,1\n", (3.12, 3.1)),
        # ... unless the object's other numbers show a decimal point.
        ("date;high;weightedAverage\n1500000000;3,120;3110.5\n", (3120.0, 3110.5)),
        ("date;high;weightedAverage\n1500000000;1.234;1,2\n", (1234.0, 1.2)),
    ],
)
def test_semicolon_text_reads_its_numbers_by_the_objects_own_convention(text, values):
    _, [row], _ = normalize_object(text.encode())
    assert (row["high"], row["weighted_average"]) == values


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("date;high;weightedAverage\n1500000000;1.234;3120\n", "'1.234' is ambiguous"),
        ("date;high;weightedAverage\n1500000000;3,120.5;3,1\n", "both '.' and ','"),
        ('{"date": 1500000000, "high": "0,0866", "weightedAverage": "0.0864"}', "both '.' and ','"),
    ],
)
def test_a_value_or_object_that_could_be_misread_1000x_is_refused(text, reason):
    with pytest.raises(formats.Rejected, match=re.escape(reason)):
        validation.records_of(text.encode(), SimpleNamespace(aliases=ALIASES), KEY, PAIR)


def test_weighted_average_is_derived_only_from_both_volumes():
    record = {"date": 1500000000, "volume": 49.75685525, "quoteVolume": 575.64509072}
    row = normalize_record(record)
    assert row["weighted_average"] == 49.75685525 / 575.64509072
    with pytest.raises(formats.Rejected, match="no volume and quote_volume to derive it"):
        normalize_record({"date": 1500000000, "volume": 49.75685525})


# ---------------------------------------------------------------- a declared basis: the typical price

#: What the exchange feed writes for an exchange whose candles carry no quote volume.
TYPICAL = {"date": 1796433300, "open": 2839.22, "high": 2844.75, "low": 2839.22, "close": 2844.40,
           "quoteVolume": 96.39, "weightedAverageBasis": "typical_price"}  # fmt: skip


@pytest.mark.parametrize("spelling", ["weightedAverageBasis", "weighted_average_basis"])
def test_a_record_declaring_the_typical_price_basis_gets_high_low_close_over_three(spelling):
    record = {name: value for name, value in TYPICAL.items() if name != "weightedAverageBasis"}
    row = normalize_record({**record, spelling: "typical_price"})

    assert row["weighted_average"] == (2844.75 + 2839.22 + 2844.40) / 3
    assert row["weighted_average_basis"] == "typical_price"
    assert (row["timestamp"], row["high"], row["low"], row["close"]) == (
        "2026-12-05T01:15:00Z",
        2844.75,
        2839.22,
        2844.4,
    )
    header, line = list(csv.reader(io.StringIO(validation.to_csv(row).decode("utf-8"))))
    assert dict(zip(header, line, strict=True))["weighted_average_basis"] == "typical_price"


def test_a_typical_price_record_in_any_format_is_read_the_same():
    text = "date;high;low;close;weightedAverageBasis\n1796433300;2844,75;2839,22;2844,4;typical_price\n"
    _, [row], skipped = normalize_object(text.encode())

    assert skipped == []
    assert (row["weighted_average"], row["weighted_average_basis"]) == (
        (2844.75 + 2839.22 + 2844.4) / 3,
        "typical_price",
    )


@pytest.mark.parametrize("given", [{"weightedAverage": 2843.0}, {"price": 2843.0}])
def test_a_record_declaring_the_typical_price_and_giving_another_weighted_average_is_rejected(given):
    with pytest.raises(formats.Rejected, match="typical_price given with a weighted_average") as refused:
        normalize_record({**TYPICAL, **given})
    assert "\n" not in str(refused.value)


def test_a_typical_price_canonical_row_read_back_is_the_same_row():
    row = normalize_record(TYPICAL)
    _, [again], skipped = normalize_object(validation.to_csv(row))
    assert skipped == []
    assert again == {**row, "source_format": "csv"}


@pytest.mark.parametrize(("value", "shown"), [("vwap", "'vwap'"), ("Typical_Price", "'Typical_Price'"), (3, "'3'")])
def test_a_basis_other_than_typical_price_is_rejected_naming_it(value, shown):
    record = {**TYPICAL, "volume": 273940.0, "weightedAverageBasis": value}  # derivable: only the basis refuses it
    with pytest.raises(formats.Rejected, match=re.escape(f"weighted_average_basis {shown} is not accepted")):
        normalize_record(record)


@pytest.mark.parametrize("basis", ["record", "volumes", "no_trade", ""])
def test_the_canonical_csvs_own_basis_read_back_changes_nothing(basis):
    """The job's own CSV is valid input: its weighted_average_basis column reads back as before."""
    record = {"date": 1500000000, "volume": 49.75685525, "quoteVolume": 575.64509072, "weighted_average_basis": basis}
    row = normalize_record(record)
    assert (row["weighted_average"], row["weighted_average_basis"]) == (49.75685525 / 575.64509072, "volumes")


@pytest.mark.parametrize("missing", ["high", "low", "close"])
def test_a_typical_price_record_without_high_low_or_close_is_rejected(missing):
    record = {**TYPICAL, "volume": 273940.0}  # derivable from the volumes: only the basis refuses it
    del record[missing]
    refused = f"typical_price needs high, low and close; the record has no {missing}$"
    with pytest.raises(formats.Rejected, match=refused):
        normalize_record(record)


def test_a_typical_price_is_validated_as_any_price():
    with pytest.raises(formats.Rejected, match="high 2839.0 is below low 2844.4"):
        normalize_record({**TYPICAL, "high": 2839.0, "low": 2844.4, "open": 2840.0})
    with pytest.raises(formats.Rejected, match="close 2900.0 outside"):
        normalize_record({**TYPICAL, "close": 2900.0})


# ---------------------------------------------------------------- the real data in ../shared/data


def test_real_5m_csv_each_row_as_its_own_headered_object():
    header, *lines = POLONIEX_5M_CSV.read_text().splitlines()
    assert len(lines) == 7673
    for line in lines:
        fmt, rows, skipped = normalize_object(f"{header}\n{line}\n".encode())
        assert (fmt, skipped, len(rows)) == ("csv", [], 1)
        source = dict(zip(header.split(","), line.split(","), strict=True))
        assert_same_candle(rows[0], source)


def test_real_5m_csv_as_one_object():
    path = POLONIEX_5M_CSV
    fmt, rows, skipped = normalize_object(path.read_bytes())
    assert (fmt, skipped, len(rows)) == ("csv", [], 7673)
    with path.open(newline="") as handle:
        for row, source in zip(rows, csv.DictReader(handle), strict=True):
            assert_same_candle(row, source)
    fillers = [row for row in rows if row["volume"] == 0]
    assert len(fillers) == 48
    assert all(row["open"] == row["high"] == row["low"] == row["close"] == row["weighted_average"] for row in fillers)


def test_real_candles_as_one_returnchartdata_json_array_normalize_each_to_its_own_slot():
    """The 5-minute file's first 300 candles as Poloniex's returnChartData answers them (one JSON array,
    numbers as JSON numbers)."""
    with POLONIEX_5M_CSV.open(newline="") as handle:
        sources = [
            {name: int(value) if name == "date" else float(value) for name, value in row.items()}
            for row in itertools.islice(csv.DictReader(handle), 300)
        ]
    fmt, rows, skipped = normalize_object(json.dumps(sources).encode())
    assert (fmt, skipped, len(rows)) == ("json-array", [], 300)
    for row, source in zip(rows, sources, strict=True):
        assert_same_candle(row, source)
    assert len({row["timestamp"] for row in rows}) == 300
    assert rows[0]["timestamp"] == "2017-07-14T02:40:00Z"


def assert_same_candle(row: dict, source: dict) -> None:
    """A canonical row carries exactly the numbers of its Poloniex source record."""
    assert row["timestamp"] == datetime.fromtimestamp(int(source["date"]), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    names = {"volume": "volume", "quote_volume": "quoteVolume", "weighted_average": "weightedAverage"}
    for column in formats.NUMERIC_FIELDS:
        assert row[column] == float(source[names.get(column, column)])
    assert row["pair"] == PAIR

"""The input contract, second pass (issue 21), through the real Glue job script on the stand-in.

Hand probes by a hostile producer that each got a false price accepted before: a record nested inside
another one replaced it (JSON and XML), another pair's object at ``<W>-v2/BTC_USDT.json`` became the
default pair's price, a correction written in the same second as the original lost to it, non-ASCII
digits and ``3,120e0`` were read 1000x too small, a field element with an attribute got the whole
record refused for a wrong reason, an average far from its own open/close passed without high/low, and
a re-run dropped other pairs' rows from the window's shared CSV.
"""

from __future__ import annotations

import csv
import io
import json

import pytest

from include.price_pipeline import layout
from tests.conftest import utc
from tests.integration.test_glue_window_contract import canonical, has_csv, reason
from tests.records import candle

pytestmark = pytest.mark.integration

START = utc(2025, 9, 8, 0, 0)  # a day no other test writes
SLOTS = [START + layout.SLOT * i for i in range(16)]
PAIRS = "ETH/USDT,BTC/USDT,SOL/USDT"  # the default pair first, as settings.glue_job_arguments lists them


def raw_key(slot, suffix: str = ".json", pair: str = "ETH/USDT") -> str:
    return layout.ingestion_key(slot, suffix, pair=pair)


def stamp(slot) -> int:
    return int(slot.timestamp())


def iso(slot) -> str:
    return layout.iso(slot)


def nested_json(slot) -> str:
    return json.dumps(
        {
            "date": stamp(slot),
            "weightedAverage": 3000,
            "high": 3010,
            "low": 2990,
            "data": {"date": stamp(slot), "weightedAverage": 9000},
        }
    )


def nested_xml(slot) -> str:
    return (
        f"<candle><date>{iso(slot)}</date><weightedAverage>3000</weightedAverage><high>3010</high><low>2990</low>"
        f"<source><date>{iso(slot)}</date><weightedAverage>9000</weightedAverage></source></candle>"
    )


def attribute_child_xml(slot) -> str:
    return (
        f"<candle><date>{iso(slot)}</date><weightedAverage>3000</weightedAverage><high>3010</high><low>2990</low>"
        f'<prev date="{iso(slot)}" weightedAverage="9000"/></candle>'
    )


def btc_kline(slot, close: str = "90050") -> list:
    opened = stamp(slot) * 1000
    return [opened, "90000", "90100", "89900", close, "1", opened + 299_999, "90050", 10, "0", "0", "0"]


def scenario() -> dict[str, str]:
    """One hostile object (beside a good ETH one where that matters) per window of SLOTS."""
    w = SLOTS
    return {
        # 1: records nested in another record.
        raw_key(w[0]): nested_json(w[0]),
        raw_key(w[1], ".xml"): nested_xml(w[1]),
        raw_key(w[2], ".xml"): attribute_child_xml(w[2]),
        # 2: another pair's object outside the pair folder grammar, after the default pair's own record.
        raw_key(w[3]): json.dumps(candle(w[3], 3000.0)),
        raw_key(w[3], "-v2/BTC_USDT.json"): json.dumps([btc_kline(w[3])]),
        raw_key(w[4]): json.dumps(candle(w[4], 3000.0)),
        raw_key(w[4], ".d/BTC_USDT.json"): json.dumps([btc_kline(w[4])]),
        # 4: digits of other scripts, and a comma with an exponent.
        raw_key(w[5]): json.dumps({"date": stamp(w[5]), "weightedAverage": "٣,١٢٠"}),
        raw_key(w[6]): json.dumps({"date": stamp(w[6]), "weightedAverage": "３,１２０"}),
        raw_key(w[7]): json.dumps({"date": stamp(w[7]), "weightedAverage": "3,120e0"}),
        raw_key(w[8]): json.dumps({"date": stamp(w[8]), "weightedAverage": "3120", "close": "٣١٢٠"}),
        # 5: an attribute on a field element.
        raw_key(w[9], ".xml"): (
            f"<candle><date>{iso(w[9])}</date><weightedAverage>3000</weightedAverage>"
            f'<volume unit="USDT">123</volume></candle>'
        ),
        # 6: no high/low, an average far from the candle's own open and close.
        raw_key(w[10]): json.dumps(
            {"date": stamp(w[10]), "weightedAverage": 0.5, "open": 854_700_000, "close": 854_700_000}
        ),
        raw_key(w[11]): json.dumps({"date": stamp(w[11]), "weightedAverage": 3000.0, "open": 2990.0, "close": 3012.0}),
    }


@pytest.fixture(scope="module")
def range_run(standin, aws_session):
    aws = aws_session
    for key, body in scenario().items():
        aws.put(key, body)
    # 3: the README's correction example, written right after the original (the same second, mostly).
    for slot in SLOTS[12:16]:
        aws.put(raw_key(slot), json.dumps(candle(slot, 3000.0)))
        aws.put(raw_key(slot, "-v2.csv"), f"date,weightedAverage\n{stamp(slot)},3100.5\n")
    window = {"--window_start": iso(START), "--window_end": iso(SLOTS[-1] + layout.SLOT)}
    return aws, aws.run_real_glue_job(window)


def test_the_range_run_succeeds(range_run):
    _aws, run = range_run
    assert run["JobRunState"] == "SUCCEEDED", run.get("ErrorMessage")


@pytest.mark.parametrize("index", [0, 1, 2], ids=["json", "xml-element", "xml-attribute-child"])
def test_1_a_record_nested_in_another_of_the_same_slot_refuses_the_object(range_run, index):
    aws, _run = range_run
    slot = SLOTS[index]
    assert not has_csv(aws, slot)  # was a canonical 9000 from the inner record
    key = raw_key(slot, ".json" if index == 0 else ".xml")
    assert "2 records of window" in reason(aws, slot, key)


@pytest.mark.parametrize(("index", "suffix"), [(3, "-v2/BTC_USDT.json"), (4, ".d/BTC_USDT.json")])
def test_2_a_key_outside_the_grammar_is_quarantined_not_read_as_the_default_pair(range_run, index, suffix):
    aws, _run = range_run
    slot = SLOTS[index]
    row = canonical(aws, slot)
    assert (float(row["weighted_average"]), row["source_key"], row["superseded"]) == (3000.0, raw_key(slot), "")
    assert "does not follow the ingestion key grammar" in reason(aws, slot, raw_key(slot, suffix))


@pytest.mark.parametrize("index", [5, 6, 7, 8], ids=["arabic-indic", "fullwidth", "comma-exponent", "mixed"])
def test_4_digits_of_other_scripts_and_a_comma_with_an_exponent_are_refused(range_run, index):
    aws, _run = range_run
    assert not has_csv(aws, SLOTS[index])  # was 3.12 (or 3120 beside 3120)
    assert "is not a number" in reason(aws, SLOTS[index], raw_key(SLOTS[index]))


def test_5_an_attribute_on_a_field_element_is_refused_for_what_it_is(range_run):
    aws, _run = range_run
    assert not has_csv(aws, SLOTS[9])
    why = reason(aws, SLOTS[9], raw_key(SLOTS[9], ".xml"))
    assert "no timestamp" not in why
    assert "XML field <volume> carries attributes (unit)" in why


def test_6_without_high_and_low_the_average_must_lie_near_open_and_close(range_run):
    aws, _run = range_run
    assert not has_csv(aws, SLOTS[10])  # was accepted: 0.5 beside a close of 854,700,000
    assert "weighted_average 0.5 is not within" in reason(aws, SLOTS[10], raw_key(SLOTS[10]))
    assert float(canonical(aws, SLOTS[11])["weighted_average"]) == 3000.0  # a normal spread passes


def test_3_a_correction_wins_however_fast_it_is_written(range_run):
    aws, _run = range_run
    for slot in SLOTS[12:16]:
        row = canonical(aws, slot)
        assert (float(row["weighted_average"]), row["source_key"]) == (3100.5, raw_key(slot, "-v2.csv")), slot
        assert json.loads(row["superseded"]) == [raw_key(slot)]


# ------------------------------------------------------------------ live runs of one window with pairs


def pairs_rows(aws, slot) -> dict[str, dict]:
    return {row["pair"]: row for row in csv.DictReader(io.StringIO(aws.get(layout.analysis_key(slot)).decode()))}


def test_2_with_pairs_configured_a_kline_beside_the_pair_folder_never_becomes_the_default_pairs_price(aws):
    slot = utc(2025, 9, 9, 10, 0)
    aws.put(raw_key(slot), json.dumps(candle(slot, 3000.0)))
    beside = layout.legacy_ingestion_key(slot, "-v2/BTC_USDT.json")  # beside the legacy alias's grammar
    aws.put(beside, json.dumps([btc_kline(slot)]))

    run = aws.run_real_glue_job({"--window_start": iso(slot), "--pairs": PAIRS})

    assert run["JobRunState"] == "SUCCEEDED", run.get("ErrorMessage")
    assert float(canonical(aws, slot)["weighted_average"]) == 3000.0  # was 90050
    assert "does not follow the ingestion key grammar" in reason(aws, slot, beside)


def test_7_a_rerun_keeps_the_rows_of_pairs_it_did_not_rederive(aws):
    slot = utc(2025, 9, 9, 11, 0)
    aws.put(raw_key(slot), json.dumps(candle(slot, 3000.0)))
    aws.put(raw_key(slot, ".json", "BTC/USDT"), json.dumps(candle(slot, 90000.0)))
    aws.put(raw_key(slot, ".json", "SOL/USDT"), json.dumps(candle(slot, 150.0)))
    assert aws.run_real_glue_job({"--window_start": iso(slot), "--pairs": PAIRS})["JobRunState"] == "SUCCEEDED"
    assert pairs_rows(aws, slot).keys() == {"ETH/USDT", "BTC/USDT", "SOL/USDT"}

    # SOL left the rules file and its raw object expired; BTC got a correction.
    aws.s3.delete_object(Bucket=aws.config.bucket, Key=raw_key(slot, ".json", "SOL/USDT"))
    aws.put(raw_key(slot, "-v2.json", "BTC/USDT"), json.dumps(candle(slot, 91000.0)))
    run = aws.run_real_glue_job({"--window_start": iso(slot), "--pairs": "ETH/USDT,BTC/USDT"})

    assert run["JobRunState"] == "SUCCEEDED", run.get("ErrorMessage")
    rows = pairs_rows(aws, slot)
    assert rows.keys() == {"ETH/USDT", "BTC/USDT", "SOL/USDT"}  # SOL's row was dropped
    assert float(rows["BTC/USDT"]["weighted_average"]) == 91000.0  # re-derived
    assert float(rows["SOL/USDT"]["weighted_average"]) == 150.0  # kept as it was


def test_7_concurrent_writers_of_the_shared_csv_both_keep_their_rows(aws):
    """Another run creates the shared CSV between this run's read and its write: the create is refused
    (If-None-Match: *), the object read again and merged, so neither run's row is lost."""
    from include.glue.price_glue import s3io, validation

    slot = utc(2025, 9, 9, 12, 0)
    key = layout.analysis_key(slot)
    aliases = json.loads(layout.FIELD_ALIASES_PATH.read_text())

    def row(pair, price):
        return validation.normalize(candle(slot, price), aliases, pair, raw_key(slot, ".json", pair), "json")

    reads = []

    class RacingS3:
        """The stand-in's S3, on which a rival run creates the object right after this run's first read."""

        def __getattr__(self, name):
            return getattr(aws.s3, name)

        def get_object(self, **kwargs):
            reads.append(kwargs["Key"])
            try:
                return aws.s3.get_object(**kwargs)
            finally:
                if len(reads) == 1:
                    aws.s3.put_object(Bucket=aws.config.bucket, Key=key, Body=validation.to_csv(row("SOL/USDT", 150.0)))

    written = s3io.write_pairs_csv(RacingS3(), aws.config.bucket, key, [row("BTC/USDT", 90000.0)])

    assert reads == [key, key]  # the create lost, and the rewrite read the rival's object
    assert pairs_rows(aws, slot).keys() == {"BTC/USDT", "SOL/USDT"}
    assert written == (key, aws.get(key))


def test_7_conditional_writes_hold_with_a_botocore_that_has_no_such_parameters(aws):
    """Glue's Python shell bundles an old botocore: the job then sends S3's condition headers itself, and S3
    (the stand-in, as S3 does) enforces them: a second create is refused, a rewrite over a stale ETag too."""
    from botocore.exceptions import ClientError

    from include.glue.price_glue import s3io

    key = layout.analysis_key(utc(2025, 9, 9, 13, 0))
    put = {"Bucket": aws.config.bucket, "Key": key, "ContentType": "text/csv"}

    created = s3io.put_with_condition_headers(aws.s3, {"IfNoneMatch": "*"}, Body=b"first", **put)
    with pytest.raises(ClientError) as refused:
        s3io.put_with_condition_headers(aws.s3, {"IfNoneMatch": "*"}, Body=b"second", **put)
    s3io.put_with_condition_headers(aws.s3, {"IfMatch": created["ETag"]}, Body=b"third", **put)
    with pytest.raises(ClientError) as stale:
        s3io.put_with_condition_headers(aws.s3, {"IfMatch": created["ETag"]}, Body=b"fourth", **put)
    aws.s3.put_object(Body=b"unconditional", **put)  # the headers go on the conditional requests only

    assert s3io.error_code(refused.value) in s3io.CONDITION_FAILED
    assert s3io.error_code(stale.value) in s3io.CONDITION_FAILED
    assert aws.get(key) == b"unconditional"

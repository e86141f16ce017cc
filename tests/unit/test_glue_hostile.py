"""The Glue job against malformed and hostile objects: each is refused with a clear one-line reason.

Each file in ``tests/data/formats/malformed/`` sits beside ``<name>.expected.json`` holding a substring
of the reason it must be rejected with and the format guess that goes into the quarantine note. The
objects go through the job's own ``process_object`` (bounded read, decode, detect, normalize).
"""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws

from include.glue.price_glue import formats, job, validation
from include.price_pipeline import alerts, layout
from tests.records import glue_args

MALFORMED = Path(__file__).resolve().parents[2] / "tests" / "data" / "formats" / "malformed"
ALIASES = json.loads(layout.FIELD_ALIASES_PATH.read_text())
CAP = 1048576
#: Hostile kinds the corpus must keep: a file name holding each word.
REQUIRED_KINDS = (
    "billion_laughs",
    "quadratic_blowup",
    "xxe",
    "external_dtd",
    "latin1",
    "utf32",
    "utf16_without_bom",
    "nan",
    "infinity",
    "negative_price",
    "high_below_low",
    "vwap_outside_range",
    "off_boundary",
    "missing_timestamp",
    "missing_vwap_no_volumes",
    "empty",
    "binary",
    "truncated",
)


class FakeS3:
    """Just enough S3 for ``read_bounded``: one object, and a record of what was asked."""

    def __init__(self, data: bytes):
        self.data, self.calls = data, []

    def head_object(self, Bucket, Key):  # noqa: N803 - boto3's argument names
        self.calls.append("head_object")
        return {"ContentLength": len(self.data)}

    def get_object(self, Bucket, Key, Range):  # noqa: N803
        self.calls.append("get_object")
        last = int(Range.rsplit("-", 1)[1])
        return {"Body": io.BytesIO(self.data[: last + 1])}


def job_args(**overrides) -> SimpleNamespace:
    defaults = {"bucket": "price-bucket", "max_object_bytes": CAP, "aliases": ALIASES, "pairs": ["ETH/USDT"]}
    return SimpleNamespace(**{**defaults, **overrides})


def rejection(data: bytes, args: SimpleNamespace | None = None) -> formats.Rejected:
    """The Rejected that ``process_object`` raises for ``data`` (fails the test if it accepts it)."""
    with pytest.raises(formats.Rejected) as caught:
        job.process_object(FakeS3(data), args or job_args(), "crypto/01-data-ingestion/x")
    return caught.value


def malformed_inputs() -> list[Path]:
    return sorted(path for path in MALFORMED.iterdir() if not path.name.endswith(".expected.json"))


# ---------------------------------------------------------------- the malformed corpus


def test_malformed_corpus_has_25_inputs_and_every_hostile_kind():
    names = [path.name for path in malformed_inputs()]
    assert len(names) >= 25
    for kind in REQUIRED_KINDS:
        assert any(kind in name for name in names), kind


@pytest.mark.parametrize("path", malformed_inputs(), ids=lambda path: path.name)
def test_malformed_object_is_rejected_with_its_reason(path):
    expected = json.loads(path.with_name(path.name + ".expected.json").read_text())
    error = rejection(path.read_bytes())
    reason = str(error)
    assert expected["reason"] in reason
    assert error.format_guess == expected["format_guess"]
    assert "\n" not in reason
    assert len(reason) < 400


# ---------------------------------------------------------------- XML


def test_xml_bombs_are_refused_before_any_expansion():
    for name in ("xml_billion_laughs.xml", "xml_quadratic_blowup.xml"):
        started = time.monotonic()
        assert "DTDForbidden" in str(rejection((MALFORMED / name).read_bytes()))
        assert time.monotonic() - started < 1.0


def test_job_parses_xml_only_through_defusedxml():
    sources = [path.read_text() for path in sorted(Path(formats.__file__).parent.glob("*.py"))]
    lines = [line for source in sources for line in source.splitlines()]
    imports = [line.strip() for line in lines if line.startswith(("import ", "from "))]
    assert [line for line in imports if "xml" in line] == [
        "import defusedxml.ElementTree as defused_etree",
        "from defusedxml import DefusedXmlException",
    ]
    assert "forbid_dtd=True" in Path(formats.__file__).read_text()


# ---------------------------------------------------------------- encodings and size


@pytest.mark.parametrize(
    "data",
    [
        "date=1500000000 pair=Ü weightedAverage=0.0864".encode(),
        b"\xef\xbb\xbf" + "date=1500000000 pair=Ü weightedAverage=0.0864".encode(),
        b"\xff\xfe" + "date=1500000000 pair=Ü weightedAverage=0.0864".encode("utf-16-le"),
        b"\xfe\xff" + "date=1500000000 pair=Ü weightedAverage=0.0864".encode("utf-16-be"),
    ],
    ids=["utf-8", "utf-8-bom", "utf-16-le-bom", "utf-16-be-bom"],
)
def test_accepted_encodings_decode_to_the_same_text(data):
    assert formats.decode_text(data) == "date=1500000000 pair=Ü weightedAverage=0.0864"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("pair=Ü".encode("cp1252"), "not valid UTF-8"),
        ("pair=Ü".encode("utf-32"), "UTF-32 is not accepted"),
        ("pair=ETH".encode("utf-16-be"), "control character"),
        (b"\x1f\x8b\x08\x00", "not valid UTF-8"),
        (b"PK\x03\x04", "control character"),
    ],
)
def test_other_encodings_are_rejected(data, reason):
    with pytest.raises(formats.Rejected, match=reason):
        formats.decode_text(data)


def test_object_over_the_cap_is_refused_without_being_read():
    s3 = FakeS3(b"x" * 2048)
    with pytest.raises(formats.Rejected, match="over the 1024-byte cap"):
        job.process_object(s3, job_args(max_object_bytes=1024), "crypto/01-data-ingestion/x")
    assert s3.calls == ["head_object"]


# ---------------------------------------------------------------- non-finite numbers


@pytest.mark.parametrize("value", ["NaN", "nan", "Infinity", "-Infinity", "inf", "+INF", float("nan"), 10**400])
def test_non_finite_prices_are_rejected_in_every_spelling(value):
    record = {"date": 1500000000, "high": value, "weightedAverage": 0.0864}
    with pytest.raises(formats.Rejected, match="high is not finite"):
        validation.normalize(record, ALIASES, "ETH/USDT", "k", "json")


def test_infinite_derived_weighted_average_is_rejected():
    record = {"date": 1500000000, "volume": 1e308, "quoteVolume": 1e-308}
    with pytest.raises(formats.Rejected, match="weighted_average must be finite"):
        validation.normalize(record, ALIASES, "ETH/USDT", "k", "json")


@pytest.mark.parametrize(
    "value",
    ["٣,١٢٠", "３,１２０", "٣١٢٠", "３１２０", "3,120e0", "1,233,214e0", "3.120,5e1", "3,1e2"],
    ids=["arabic", "fullwidth", "arabic-plain", "fullwidth-plain", "comma-exp", "grouped-exp", "both-exp", "short"],
)
def test_one_number_grammar_ascii_digits_and_no_comma_with_an_exponent(value):
    """Issue 21, point 4: "٣,١٢٠" and "3,120e0" read 3.12, where ASCII "3,120" is refused as ambiguous."""
    record = {"date": 1500000000, "weightedAverage": value}
    with pytest.raises(formats.Rejected, match="weighted_average is not a number"):
        validation.normalize(record, ALIASES, "ETH/USDT", "k", "json")


def test_a_timestamp_in_other_digits_is_not_understood():
    record = {"date": "١٥٠٠٠٠٠٠٠٠", "weightedAverage": 3120.0}
    with pytest.raises(formats.Rejected, match="timestamp not understood"):
        validation.normalize(record, ALIASES, "ETH/USDT", "k", "json")


# ---------------------------------------------------------------- input never names an output


@mock_aws
def test_input_never_builds_an_output_key(monkeypatch, capsys):
    """Keys come from the window an object is listed under and a digest of its key, never from input text."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="price-bucket")
    slot = datetime(2017, 7, 14, 2, 40, tzinfo=UTC)
    good = layout.ingestion_window_prefix(slot, layout.INGESTION_PREFIX) + "..%2F..%2Fetc%2Fpasswd.json"
    # a '/' after the slot other than a pair folder's is outside the ingestion key grammar (issue 21)
    bad = layout.ingestion_window_prefix(slot, layout.INGESTION_PREFIX) + "-x/../../crypto/02-data-analysis/evil"
    named = layout.ingestion_window_prefix(slot, layout.INGESTION_PREFIX) + "-n/../../crypto/03-price-changes/x.json"
    folder = layout.ingestion_window_prefix(slot, layout.INGESTION_PREFIX) + "/../../crypto/03-price-changes/y.json"
    record = {"date": 1500000000, "weightedAverage": 0.0864}
    s3.put_object(Bucket="price-bucket", Key=good, Body=json.dumps(record).encode())
    s3.put_object(
        Bucket="price-bucket",
        Key=bad,
        Body=b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
    )
    hostile_pair = {**record, "pair": "../../crypto/02-data-analysis/evil"}
    s3.put_object(Bucket="price-bucket", Key=named, Body=json.dumps(hostile_pair).encode())
    s3.put_object(Bucket="price-bucket", Key=folder, Body=json.dumps(record).encode())
    args = glue_args("price-bucket", slot)

    summary = job.run(s3, args)

    assert summary["rows"] == 1
    assert sorted(item["key"] for item in summary["quarantined"]) == sorted([bad, named, folder])
    out = capsys.readouterr().out
    for key in (bad, named, folder):
        assert "QUARANTINED " + job.quoted(key) + ": " + job.GRAMMAR_REFUSED in out
    written = {item["Key"] for item in s3.list_objects_v2(Bucket="price-bucket")["Contents"]} - {
        good,
        bad,
        named,
        folder,
    }
    quarantined = {*layout.quarantine_keys(slot, bad), *layout.quarantine_keys(slot, named)}
    quarantined |= {*layout.quarantine_keys(slot, folder)}
    assert written == {layout.analysis_key(slot), *quarantined}
    body = s3.get_object(Bucket="price-bucket", Key=layout.analysis_key(slot))["Body"].read().decode()
    assert "evil" not in body  # the record's pair text is never data in a row: the row names the configured pair


#: Key text a producer may choose: after the slot, the grammar's suffix takes any character but "/".
FORGED_KEY_TEXT = "\nSUMMARY {}\nQUARANTINED nothing <!channel> \u202e"


@mock_aws
def test_the_run_log_quotes_every_key_it_names(monkeypatch, capsys):
    """Issue 35: QUARANTINED (and SUPERSEDED) lines printed raw keys, so a key could forge run-log lines (the
    Glue task's log, which make run shows) and Slack mentions."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="price-bucket")
    slot = datetime(2017, 7, 14, 2, 40, tzinfo=UTC)
    record = json.dumps({"date": int(slot.timestamp()), "weightedAverage": 0.0864}).encode()
    window = layout.ingestion_window_prefix(slot, layout.INGESTION_PREFIX)
    refused = window + "/x" + FORGED_KEY_TEXT  # outside the key grammar: quarantined
    older = window + ".json" + FORGED_KEY_TEXT  # the default pair's, version 1: superseded by -v2
    for key in (refused, older, window + "-v2.json"):
        s3.put_object(Bucket="price-bucket", Key=key, Body=record)

    summary = job.run(s3, glue_args("price-bucket", slot))

    assert [item["key"] for item in summary["quarantined"]] == [refused]
    assert [item["key"] for item in summary["superseded"]] == [older]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["QUARANTINED", "SUPERSEDED"]
    assert lines[0].startswith(f"QUARANTINED {job.quoted(refused)}: ")
    assert lines[1].startswith(f"SUPERSEDED in window {layout.slot_stamp(slot)}: {job.quoted(older)} (by the newer ")
    for line in lines:
        assert line.isascii()
        assert line.isprintable()
        assert "<!channel>" not in line


@pytest.mark.parametrize("text", [FORGED_KEY_TEXT, "x" * 400, "plain/key.json", "é\x00\x1b&<>\"'\\", ""])
def test_the_jobs_quoting_is_alerts_quoted(text):
    """alerts.py is not in the Glue job's bundle, so the job carries a copy of ``alerts.quoted``, the one way
    text read from S3 is shown; the copy must quote as the original does."""
    assert job.QUOTED_LIMIT == alerts.QUOTED_LIMIT
    assert job.quoted(text) == alerts.quoted(text)


@mock_aws
def test_a_failure_inside_one_object_is_its_quarantine_reason_and_the_range_run_goes_on(monkeypatch, capsys):
    """Even a bug meeting one object (here: the parser raising something other than Rejected) fails
    only that object; before, any exception in a range run failed it whole and wrote nothing."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="price-bucket")
    first = datetime(2017, 7, 14, 2, 40, tzinfo=UTC)
    slots = [first + layout.SLOT * i for i in range(3)]
    for slot in slots:
        record = {"date": int(slot.timestamp()), "weightedAverage": 0.0864}
        s3.put_object(
            Bucket="price-bucket",
            Key=layout.ingestion_key(slot, ".json", pair="ETH/USDT"),
            Body=json.dumps(record).encode(),
        )
    real_parse = formats.parse_object

    def parse_object(text, aliases):
        if f'"date": {int(slots[1].timestamp())}' in text:
            raise KeyError("a bug")
        return real_parse(text, aliases)

    monkeypatch.setattr(validation, "parse_object", parse_object)
    args = glue_args("price-bucket", first, first + 3 * layout.SLOT)

    summary = job.run(s3, args)

    assert summary["rows"] == 2
    broken = layout.ingestion_key(slots[1], ".json", pair="ETH/USDT")
    assert summary["quarantined"] == [{"key": broken, "reason": "could not be processed: KeyError: 'a bug'"}]
    listed = {item["Key"] for item in s3.list_objects_v2(Bucket="price-bucket")["Contents"]}
    assert {layout.analysis_key(slots[0]), layout.analysis_key(slots[2])} <= listed
    assert layout.analysis_key(slots[1]) not in listed

"""Slot math and key layout: the keys the Glue job writes (it imports this module, shipped in its bundle)
and the DAG reads, for every slot and every prefix."""

from __future__ import annotations

import fnmatch
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.price_pipeline import layout
from tests.conftest import utc

PROPERTY = settings(max_examples=200, deadline=None)

fixed_offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(min_value=-14 * 60, max_value=14 * 60)
)
zones = st.one_of(st.just(UTC), fixed_offsets, st.timezones())
#: Aware moments from the pipeline's era and well beyond it, in any time zone.
moments = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=zones)
slots = moments.map(layout.slot_start)
prefixes = st.text(max_size=40)
source_keys = st.text(max_size=200)

STAMP = re.compile(r"\d{8}T\d{4}Z")
DIGEST = r"[0-9a-f]{16}"


# ------------------------------------------------------------------ slot_start


def test_slot_start_floors_an_aware_utc_moment_to_its_five_minute_slot():
    assert layout.slot_start(utc(2026, 11, 25, 19, 34, 59)) == utc(2026, 11, 25, 19, 30)
    assert layout.slot_start(utc(2026, 11, 25, 19, 35)) == utc(2026, 11, 25, 19, 35)


def test_slot_start_reads_a_naive_moment_as_utc():
    naive = datetime(2026, 11, 25, 19, 34, 12, 500000)

    slot = layout.slot_start(naive)

    assert slot == utc(2026, 11, 25, 19, 30)
    assert slot.utcoffset() == timedelta(0)


def test_slot_start_converts_an_aware_moment_in_another_zone_to_utc():
    plus_two = timezone(timedelta(hours=2))

    slot = layout.slot_start(datetime(2026, 1, 1, 0, 7, tzinfo=plus_two))

    assert slot == utc(2025, 12, 31, 22, 5)
    assert slot.tzinfo == UTC


def test_slot_start_drops_microseconds_just_before_the_next_slot():
    assert layout.slot_start(utc(2026, 3, 1, 23, 59, 59, 999999)) == utc(2026, 3, 1, 23, 55)


@PROPERTY
@given(moment=moments)
def test_slot_start_is_the_utc_five_minute_boundary_at_or_before_the_moment(moment):
    slot = layout.slot_start(moment)

    assert slot.utcoffset() == timedelta(0)
    assert (slot.minute % 5, slot.second, slot.microsecond) == (0, 0, 0)
    assert slot.timestamp() <= moment.timestamp() < (slot + layout.SLOT).timestamp()
    assert layout.slot_start(slot) == slot


@PROPERTY
@given(moment=st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)))
def test_slot_start_of_a_naive_moment_equals_that_of_the_same_wall_time_in_utc(moment):
    assert layout.slot_start(moment) == layout.slot_start(moment.replace(tzinfo=UTC))


# ------------------------------------------------------------------ stamps and partitions


def test_slot_stamp_is_the_utc_minute_with_a_z():
    assert layout.slot_stamp(utc(2026, 11, 25, 19, 30)) == "20261125T1930Z"
    assert layout.slot_stamp(datetime(2026, 11, 25, 20, 30, tzinfo=timezone(timedelta(hours=1)))) == "20261125T1930Z"


@PROPERTY
@given(slot=slots)
def test_slot_stamp_round_trips_through_parse_slot_stamp(slot):
    stamp = layout.slot_stamp(slot)

    assert STAMP.fullmatch(stamp)
    assert layout.parse_slot_stamp(stamp) == slot


def test_parse_slot_stamp_rejects_text_that_is_not_a_stamp():
    with pytest.raises(ValueError, match="does not match format"):
        layout.parse_slot_stamp("2026-11-25T19:30Z")


def test_partition_is_hive_style_with_zero_padded_month_and_day():
    assert layout.partition(utc(2026, 1, 5, 10, 0)) == "year=2026/month=01/day=05/"


def test_partition_uses_the_utc_day_of_an_aware_moment_in_another_zone():
    half_past_midnight_in_plus_two = datetime(2026, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))

    assert layout.partition(half_past_midnight_in_plus_two) == "year=2025/month=12/day=31/"


# ------------------------------------------------------------------ key builders


SLOT = utc(2026, 11, 25, 19, 30)


def test_key_builders_follow_the_documented_layout_under_the_default_prefixes():
    day = "year=2026/month=11/day=25/"

    assert layout.ingestion_window_prefix(SLOT) == f"crypto/01-data-ingestion/{day}20261125T1930Z"
    assert layout.ingestion_key(SLOT, ".json", pair="ETH/USDT") == (
        f"crypto/01-data-ingestion/{day}20261125T1930Z/ETH_USDT.json"
    )
    assert layout.legacy_ingestion_key(SLOT, ".json") == f"crypto/01-data-ingestion/{day}20261125T1930Z.json"
    assert layout.analysis_key(SLOT) == f"crypto/02-data-analysis/{day}20261125T1930Z/pairs.csv"
    assert layout.legacy_analysis_key(SLOT) == f"crypto/02-data-analysis/{day}20261125T1930Z.csv"
    assert layout.ledger_key(SLOT) == f"crypto/03-price-changes/{day}20261125T1930Z.json"
    copy_key, reason_key = layout.quarantine_keys(SLOT, "crypto/01-data-ingestion/x.json")
    assert re.fullmatch(rf"crypto/99-quarantine/{day}20261125T1930Z/({DIGEST})\.object", copy_key)
    assert reason_key == copy_key.removesuffix(".object") + ".reason.json"


def test_key_builders_honour_a_custom_prefix():
    assert layout.ingestion_key(SLOT, ".xml", "raw/", pair="ETH/USDT") == (
        "raw/year=2026/month=11/day=25/20261125T1930Z/ETH_USDT.xml"
    )
    assert layout.analysis_key(SLOT, "out/") == "out/year=2026/month=11/day=25/20261125T1930Z/pairs.csv"
    assert layout.ledger_key(SLOT, "ledger/") == "ledger/year=2026/month=11/day=25/20261125T1930Z.json"
    assert layout.quarantine_keys(SLOT, "k", "q/")[0].startswith("q/year=2026/month=11/day=25/20261125T1930Z/")


@PROPERTY
@given(slot=slots, other=slots, extension=st.sampled_from([".json", ".csv", ".xml", ".txt", ".csv.gz", "", "-b.json"]))
def test_a_window_prefix_lists_its_own_slot_and_never_another_slot(slot, other, extension):
    for key in (layout.ingestion_key(other, extension, pair="ETH/USDT"), layout.legacy_ingestion_key(other, extension)):
        assert key.startswith(layout.ingestion_window_prefix(slot)) == (slot == other)


# ------------------------------------------------------------------ slot_of_key


@pytest.mark.parametrize(
    "key_of",
    [
        pytest.param(lambda slot: layout.ingestion_key(slot, ".json", pair="ETH/USDT"), id="ingestion-json"),
        pytest.param(lambda slot: layout.ingestion_key(slot, ".csv.gz", pair="AB/B1"), id="ingestion-double-extension"),
        pytest.param(lambda slot: layout.ingestion_key(slot, "", pair="ETH/USDT"), id="ingestion-no-extension"),
        pytest.param(
            lambda slot: layout.ingestion_key(slot, ".json", "other/raw/", pair="ETH/USDT"),
            id="ingestion-custom-prefix",
        ),
        pytest.param(lambda slot: layout.legacy_ingestion_key(slot, ".json"), id="legacy-alias"),
        pytest.param(layout.analysis_key, id="analysis"),
        pytest.param(layout.ledger_key, id="ledger"),
    ],
)
def test_slot_of_key_recovers_the_slot_a_key_was_built_for(key_of):
    assert layout.slot_of_key(key_of(SLOT)) == SLOT


@PROPERTY
@given(slot=slots)
def test_slot_of_key_inverts_the_analysis_and_ledger_keys_for_any_slot(slot):
    assert layout.slot_of_key(layout.analysis_key(slot)) == slot
    assert layout.slot_of_key(layout.ledger_key(slot)) == slot


def test_slot_of_key_recovers_the_slot_of_a_quarantine_key():
    copy_key, reason_key = layout.quarantine_keys(SLOT, "crypto/01-data-ingestion/bad.json")

    assert layout.slot_of_key(copy_key) == SLOT
    assert layout.slot_of_key(reason_key) == SLOT


# ------------------------------------------------------------------ day_partitions


def test_day_partitions_of_one_day_is_that_day():
    assert layout.day_partitions(utc(2026, 5, 4, 1, 0), utc(2026, 5, 4, 23, 55)) == ["year=2026/month=05/day=04/"]


def test_day_partitions_cross_a_month_end():
    assert layout.day_partitions(utc(2026, 1, 31, 23, 55), utc(2026, 2, 1, 0, 0)) == [
        "year=2026/month=01/day=31/",
        "year=2026/month=02/day=01/",
    ]


def test_day_partitions_cross_a_year_end_even_when_the_last_time_of_day_is_earlier():
    assert layout.day_partitions(utc(2025, 12, 30, 22, 0), utc(2026, 1, 1, 0, 5)) == [
        "year=2025/month=12/day=30/",
        "year=2025/month=12/day=31/",
        "year=2026/month=01/day=01/",
    ]


def test_day_partitions_include_a_leap_day():
    assert layout.day_partitions(utc(2024, 2, 28, 12, 0), utc(2024, 3, 1, 0, 0)) == [
        "year=2024/month=02/day=28/",
        "year=2024/month=02/day=29/",
        "year=2024/month=03/day=01/",
    ]


def test_day_partitions_count_days_in_utc_for_moments_in_other_zones():
    first = datetime(2026, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))  # 2025-12-31 22:30 UTC

    assert layout.day_partitions(first, utc(2026, 1, 1, 0, 0)) == [
        "year=2025/month=12/day=31/",
        "year=2026/month=01/day=01/",
    ]


@PROPERTY
@given(first=slots, span=st.integers(min_value=0, max_value=12 * 24 * 10))
def test_day_partitions_hold_every_utc_day_from_first_to_last_once_and_in_order(first, span):
    last = first + layout.SLOT * span
    first_day, last_day = first.astimezone(UTC).date(), last.astimezone(UTC).date()
    expected_days = [first_day + timedelta(days=n) for n in range((last_day - first_day).days + 1)]

    partitions = layout.day_partitions(first, last)

    assert partitions == [f"year={d:%Y}/month={d:%m}/day={d:%d}/" for d in expected_days]
    assert layout.partition(first) in partitions
    assert layout.partition(last) in partitions


# ------------------------------------------------------------------ quarantine keys hold only a digest


HOSTILE_SOURCE_KEYS = [
    "../../etc/passwd",
    "/etc/passwd",
    "crypto/01-data-ingestion/../../../secrets/key.pem",
    "..\\..\\windows\\system32",
    "key\nwith\r\nline breaks",
    "key with spaces and ünïcödé.json",
    "",
]


@pytest.mark.parametrize("source_key", HOSTILE_SOURCE_KEYS)
def test_quarantine_keys_hold_a_hex_digest_in_place_of_the_source_key(source_key):
    window_dir = f"{layout.QUARANTINE_PREFIX}{layout.partition(SLOT)}{layout.slot_stamp(SLOT)}/"

    copy_key, reason_key = layout.quarantine_keys(SLOT, source_key, layout.QUARANTINE_PREFIX)

    for key, suffix in ((copy_key, ".object"), (reason_key, ".reason.json")):
        assert re.fullmatch(re.escape(window_dir) + DIGEST + re.escape(suffix), key), key
        assert ".." not in key
        assert "passwd" not in key
        assert "etc" not in key
        assert "\n" not in key


@PROPERTY
@given(slot=slots, source_key=source_keys, prefix=prefixes)
def test_quarantine_keys_vary_only_by_a_digest_under_the_window_directory(slot, source_key, prefix):
    window_dir = f"{prefix}{layout.partition(slot)}{layout.slot_stamp(slot)}/"

    copy_key, reason_key = layout.quarantine_keys(slot, source_key, prefix)

    assert re.fullmatch(re.escape(window_dir) + DIGEST + r"\.object", copy_key)
    assert reason_key == copy_key.removesuffix(".object") + ".reason.json"


@PROPERTY
@given(slot=slots, keys=st.lists(source_keys, min_size=2, max_size=2, unique=True))
def test_distinct_source_keys_get_distinct_quarantine_keys_and_equal_ones_the_same(slot, keys):
    first, second = keys

    assert layout.quarantine_keys(slot, first) != layout.quarantine_keys(slot, second)
    assert layout.quarantine_keys(slot, first) == layout.quarantine_keys(slot, first)


# ------------------------------------------------------------------ many pairs


def test_pair_raw_keys_sit_in_the_window_folder_and_the_pairs_share_one_csv_and_one_ledger_object():
    day = "year=2026/month=11/day=25/"
    assert layout.pair_slug("ETH/USDT") == "ETH_USDT"
    assert layout.ingestion_key(SLOT, ".json", pair="BTC/USDT") == (
        f"crypto/01-data-ingestion/{day}20261125T1930Z/BTC_USDT.json"
    )
    assert layout.analysis_key(SLOT) == f"crypto/02-data-analysis/{day}20261125T1930Z/pairs.csv"
    assert layout.pairs_ledger_key(SLOT) == f"crypto/03-price-changes/{day}20261125T1930Z/pairs.jsonl"
    assert layout.slot_of_key(layout.analysis_key(SLOT)) == SLOT
    assert layout.slot_of_key(layout.pairs_ledger_key(SLOT)) == SLOT
    assert layout.parquet_key(2026, 11, pair="SOL/USDT") == (
        "crypto/02-data-analysis-parquet/pair=SOL_USDT/year=2026/month=11/data.parquet"
    )
    # the default pair is a pair as any other; its months of before (migrate_storage moves them) had no pair=
    assert layout.parquet_key(2026, 11, "ETH/USDT") == (
        "crypto/02-data-analysis-parquet/pair=ETH_USDT/year=2026/month=11/data.parquet"
    )
    assert layout.legacy_parquet_key(2026, 11) == "crypto/02-data-analysis-parquet/year=2026/month=11/data.parquet"
    with pytest.raises(ValueError, match="BASE/QUOTE"):
        layout.pair_slug("ETH/../x")


def test_no_pair_slug_is_the_shared_files_name():
    with pytest.raises(ValueError, match="BASE/QUOTE"):
        layout.pair_slug(layout.PAIRS_FILE)


@pytest.mark.parametrize(
    ("rest", "read"),
    [
        (".json", ("ETH/USDT", 1)),  # a single-pair key is the default pair's
        ("-v2.csv", ("ETH/USDT", 2)),
        ("-v12", ("ETH/USDT", 12)),
        ("-v2b.csv", ("ETH/USDT", 1)),  # not a version: -v<N> then '.' or the end
        ("-v0.csv", ("ETH/USDT", 1)),
        ('-"producer, b".csv', ("ETH/USDT", 1)),
        ("/BTC_USDT.json", ("BTC/USDT", 1)),
        ("/BTC_USDT-v2.csv", ("BTC/USDT", 2)),
        ("/SOL_USDT", ("SOL/USDT", 1)),
        ("/BTC_USDTX.json", ("BTC/USDTX", 1)),
        ("", None),  # outside the grammar: the default pair's key has a suffix
        ("x.json", None),
        ("/notes.txt", None),  # in the window folder without a pair: named by nobody
        ("/BTC_USDT_x.json", None),
        ("-v2/BTC_USDT.json", None),  # another pair's object beside the pair folder (issue 21, point 2)
        (".d/BTC_USDT.json", None),
        ("/BTC_USDT/x.json", None),
        ("/BTC_USDT.d/x.json", None),
    ],
)
def test_the_ingestion_key_grammar_gives_a_key_one_pair_and_version_or_none(rest, read):
    key = layout.ingestion_window_prefix(SLOT) + rest
    assert layout.read_ingestion_key(key, SLOT, layout.INGESTION_PREFIX, "ETH/USDT") == read


@pytest.mark.parametrize("rest", [".json", "-v2.csv", ".csv.gz", '-"producer, b".csv'])
def test_the_sensor_glob_of_the_default_pair_is_its_slugs_as_for_any_pair_and_the_alias_still_reads_as_it(rest):
    prefix = layout.ingestion_window_prefix(SLOT)
    glob = layout.record_glob(SLOT, "ETH/USDT")
    assert fnmatch.fnmatch(f"{prefix}/ETH_USDT{rest}", glob)
    for other in ("/BTC_USDT.json", "/BTC_USDT-v2.csv", "", "x.json"):
        assert not fnmatch.fnmatch(prefix + other, glob)
    assert layout.read_ingestion_key(prefix + rest, SLOT, layout.INGESTION_PREFIX, "ETH/USDT")[0] == "ETH/USDT"


PAIRS = ["ETH/USDT", "BTC/USDT", "BTC/USDTX", "ETH/BTC"]
#: Keys under a window: some of a pair by the grammar, some outside it.
window_rests = st.builds(
    lambda folder, mark, rest: folder + mark + rest,
    st.sampled_from(["", "/BTC_USDT", "/BTC_USDTX", "/ETH_BTC", "/ETH_USDT", "/BTC"]),
    st.sampled_from(["", ".", "-", "-v2", "/", "x"]),
    st.text(alphabet="abcv0123456789./-_", max_size=12),
)


@PROPERTY
@given(slot=slots, rest=window_rests, pair=st.sampled_from(PAIRS))
def test_the_sensors_pattern_of_a_pair_matches_every_key_the_grammar_gives_that_pair(slot, rest, pair):
    """The sensor's trigger wakes on ``record_glob``: a key of the pair it misses would hold the window
    until the deadline. (It may match more: a wake-up is checked by ``records_listed``.) Every pair's keys are
    ``<S>/<SLUG><suffix>``; the default pair's legacy alias ``<S><suffix>`` is found by the listing (at the
    deadline, or by the wait for any key while no pair's record is there)."""
    key = layout.ingestion_window_prefix(slot) + rest
    read = layout.read_ingestion_key(key, slot, layout.INGESTION_PREFIX, "ETH/USDT")

    if read and read[0] == pair and rest.startswith("/"):
        assert fnmatch.fnmatch(key, layout.record_glob(slot, pair))
    assert (read is not None and read[0] in PAIRS and read[0] == pair) == (
        (slot, pair) in layout.records_listed([key], [slot], layout.INGESTION_PREFIX, "ETH/USDT")
    )


def test_the_pairs_listed_are_those_the_grammar_names_and_no_key_outside_it():
    prefix = layout.ingestion_window_prefix(SLOT)
    keys = [prefix + rest for rest in (".json", "/BTC_USDT-v2.csv", "/notes.txt", "-v2/SOL_USDT.json", "/SOL_USDT/x")]

    listed = layout.records_listed(keys, [SLOT], layout.INGESTION_PREFIX, "ETH/USDT")
    assert listed == {(SLOT, "ETH/USDT"), (SLOT, "BTC/USDT")}
    assert layout.records_listed(keys[2:], [SLOT], layout.INGESTION_PREFIX, "ETH/USDT") == set()


@PROPERTY
@given(slot=slots, other=slots, pair=st.sampled_from(["", "BTC/USDT", "SOL/USDT", "ETH/BTC", "ETH/USDT"]))
def test_one_window_listing_finds_every_pairs_object_of_that_window_only(slot, other, pair):
    key = layout.ingestion_key(other, ".json", pair=pair) if pair else layout.legacy_ingestion_key(other, ".json")
    assert key.startswith(layout.ingestion_window_prefix(slot)) == (slot == other)
    if slot == other:
        assert layout.read_ingestion_key(key, slot, layout.INGESTION_PREFIX, "ETH/USDT") == (pair or "ETH/USDT", 1)
        assert layout.slot_of_key(key) == slot

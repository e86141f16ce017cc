"""The Price alerts page's data (include/price_pipeline/browse.py) read from the stand-in.

Each test writes its own day (2026-03-xx) so the shared stand-in never mixes their windows.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from include.price_pipeline import browse, layout, ledger, parquet, rules
from include.price_pipeline.analysis import Price
from tests.conftest import utc

pytestmark = pytest.mark.integration

RULES = rules.load(rules.DEFAULT_RULES_FILE)
RULE = RULES.default_rule
PAIR = RULES.default_pair


def put_entry(aws, slot, price, previous_price, decision, reason="r", sns_message_id=None):
    """The default pair's line of the window's ledger object, as the pipeline writes it."""
    previous = Price(slot - layout.SLOT, previous_price, PAIR, "prev") if previous_price else None
    change_pct = (price - previous_price) / previous_price * 100 if previous_price else None
    direction = "flat" if not change_pct else "up" if change_pct > 0 else "down"
    decided = rules.Decision(RULE.name, RULE.kind, decision, reason, direction, change_pct, previous)
    entry = ledger.pair_entry(PAIR, slot, Price(slot, price, PAIR, "src"), (RULE,), {RULE.name: decided}, True, "")
    state = entry["rules"][RULE.name] | {"sns_message_id": sns_message_id}
    entry |= {"rules": {RULE.name: state}, "decision": "notified" if decision == "notified" else "analysed"}
    aws.put(layout.pairs_ledger_key(slot), ledger.entries_bytes({PAIR: entry}))
    return entry


def test_short_range_reads_every_ledger_entry_and_marks_missing_windows(aws):
    start = utc(2026, 3, 2, 10, 0)
    put_entry(aws, start, 100.0, None, "no_previous_record")
    put_entry(aws, start + layout.SLOT, 102.0, 100.0, "notified", sns_message_id="msg-1")
    # start + 2 slots: nothing at all (a gap)
    put_entry(aws, start + 3 * layout.SLOT, 102.1, 102.0, "below_threshold")

    data = browse.history(aws.s3, aws.config, RULES, start, start + 4 * layout.SLOT)

    assert data["mode"] == "ledger"
    assert [(r["window_start"], r["decision"]) for r in data["windows"]] == [
        ("2026-03-02T10:00:00Z", "no_previous_record"),
        ("2026-03-02T10:05:00Z", "notified"),
        ("2026-03-02T10:10:00Z", "missing"),
        ("2026-03-02T10:15:00Z", "below_threshold"),
    ]
    notified = data["windows"][1]
    assert notified["price"] == 102.0
    assert notified["change_pct"] == pytest.approx(2.0)
    assert notified["threshold_pct"] == 1.0
    assert notified["sns_message_id"] == "msg-1"
    assert data["windows"][2]["price"] is None
    assert data["counts"] == {"below_threshold": 1, "missing": 1, "no_previous_record": 1, "notified": 1}


def test_entries_are_read_as_the_pipeline_reads_them_unknown_decisions_as_is_missing_fields_blank(aws):
    """The page reads the ledger with the pipeline's reader: an entry with a decision it does not know is shown
    as it is, missing or mistyped fields are blank, and an object the pipeline would refuse is a row saying so."""
    start = utc(2026, 3, 3, 10, 0)
    unknown = {"pair": PAIR, "decision": "analysed", "rules": {"r": {"decision": "brand_new"}}, "new_field": 1}
    mistyped = {"pair": PAIR, "decision": "analysed", "latest": "not an object",
                "rules": {"r": {"decision": "below_threshold", "change_pct": "2"}}}  # fmt: skip
    aws.put(layout.pairs_ledger_key(start), ledger.entries_bytes({PAIR: unknown}))
    aws.put(layout.pairs_ledger_key(start + layout.SLOT), ledger.entries_bytes({PAIR: mistyped}))
    aws.put(layout.pairs_ledger_key(start + 2 * layout.SLOT), b"not json")

    rows = browse.history(aws.s3, aws.config, RULES, start, start + 4 * layout.SLOT)["windows"]

    assert (rows[0]["decision"], rows[0]["price"], rows[0]["reason"], rows[0]["sns_message_id"]) == (
        "brand_new",
        None,
        None,
        None,
    )
    assert (rows[1]["decision"], rows[1]["price"], rows[1]["change_pct"]) == ("below_threshold", None, None)
    assert rows[2]["decision"] == "damaged_ledger"
    assert "line 1: not a JSON object with a pair" in rows[2]["reason"]
    assert rows[3]["decision"] == "missing"


def test_quarantined_objects_of_the_range_come_with_their_reasons(aws):
    slot = utc(2026, 3, 4, 10, 5)
    copy_key, reason_key = layout.quarantine_keys(slot, "crypto/01-data-ingestion/x/<b>bad</b>.json")
    aws.put(copy_key, b"garbage")
    aws.put(reason_key, json.dumps({"reason": "<script>x</script> not a record", "source_key": "raw/key.json"}))
    outside, _ = layout.quarantine_keys(slot + timedelta(hours=1), "other")
    aws.put(outside, b"later")

    found = browse.quarantined(aws.s3, aws.config, RULES, utc(2026, 3, 4, 10, 0), utc(2026, 3, 4, 10, 30), PAIR)
    rows = browse.history(aws.s3, aws.config, RULES, utc(2026, 3, 4, 10, 0), utc(2026, 3, 4, 10, 15))["windows"]

    assert found == [
        {
            "window_start": "2026-03-04T10:05:00Z",
            "key": copy_key,
            "reason_key": reason_key,
            "reason": "<script>x</script> not a record",
            "source_key": "raw/key.json",
            "format_guess": None,
        }
    ]
    assert [(row["decision"], row["reason"]) for row in rows] == [
        ("missing", None),
        ("quarantined", "<script>x</script> not a record"),
        ("missing", None),
    ]


def test_long_range_reads_prices_from_parquet_and_the_ledger_only_where_it_says_more(aws):
    start = utc(2026, 3, 10, 0, 0)
    end = start + timedelta(days=2)  # 576 windows: the Parquet path
    slots = layout.slots_between(start, end)
    breach, gap, ledger_only = slots[100], slots[200], slots[300]
    prices = {slot: 100.0 + (index % 7) * 0.01 for index, slot in enumerate(slots)}
    prices[breach] = prices[breach - layout.SLOT] * 1.05
    del prices[gap], prices[ledger_only]
    rows = [
        {"timestamp": slot, "weighted_average": price, "pair": "ETH/USDT", "source_key": f"k{slot:%H%M}",
         "source_format": "json", **dict.fromkeys(("open", "high", "low", "close", "volume", "quote_volume"), 1.0)}
        for slot, price in prices.items()
    ]  # fmt: skip
    aws.put(layout.parquet_key(2026, 3, pair="ETH/USDT"), parquet.parquet_bytes(rows))
    put_entry(aws, breach, prices[breach], prices[breach - layout.SLOT], "notified", sns_message_id="msg-9")
    put_entry(aws, ledger_only, 99.0, None, "no_previous_record", reason="written by a live run")
    calm = slots[50]
    put_entry(aws, calm, prices[calm], prices[calm - layout.SLOT], "below_threshold", reason="not read")

    data = browse.history(aws.s3, aws.config, RULES, start, end)
    details = {row["window_start"]: row for row in browse.ledger_details(aws.s3, aws.config, RULES, start, end)}

    assert data["mode"] == "parquet"
    by_slot = {row["window_start"]: row for row in data["windows"]}
    assert len(by_slot) == len(slots)
    assert (data["counts"]["pending"], data["unlisted_counts"], data["envelope"]) == (4, {}, None)  # all listed
    # First answer: the prices; the breach and the windows without a price wait for their ledger entry.
    assert {stamp for stamp, row in by_slot.items() if row["decision"] == "pending"} == set(details)
    back_down = breach + layout.SLOT  # the price returns: a breach too, with no ledger entry here
    assert set(details) == {layout.iso(s) for s in (breach, back_down, gap, ledger_only)}
    assert by_slot[layout.iso(breach)]["price"] == prices[breach]
    assert by_slot[layout.iso(breach)]["change_pct"] == pytest.approx(5.0)
    computed = by_slot[layout.iso(calm)]
    assert (computed["decision"], computed["source"], computed["reason"]) == ("below_threshold", "parquet", None)
    assert computed["price"] == prices[calm]
    assert by_slot[layout.iso(start)]["decision"] == "no_previous_record"  # nothing before the range
    # Second answer: what the ledger says about those.
    assert details[layout.iso(breach)] | {"change_pct": None} == {
        "window_start": layout.iso(breach), "price": prices[breach], "change_pct": None, "threshold_pct": 1.0,
        "direction": "up", "decision": "notified", "reason": f"{RULE.name}: r", "sns_message_id": "msg-9",
        "source": "ledger", "fired": [{"rule": RULE.name, "direction": "up", "decision": "notified"}],
    }  # fmt: skip
    assert details[layout.iso(gap)]["decision"] == "missing"
    assert details[layout.iso(back_down)]["decision"] == "no_ledger_entry"
    assert details[layout.iso(back_down)]["price"] == prices[back_down]
    assert details[layout.iso(ledger_only)]["reason"] == f"{RULE.name}: written by a live run"


def test_a_range_longer_than_31_days_lists_what_is_not_quiet_and_draws_the_rest(aws, monkeypatch):
    """Issue 37: a year is 105,120 windows (20 MB of rows); over more than 31 days the page lists the windows
    that fired, wait for their ledger entry or lack a price, counts every window and draws the quiet ones as
    a chart envelope; the windows without a price are counted missing unless the ledger has their entry."""
    start = utc(2019, 6, 1)
    end = start + timedelta(days=40)  # 11,520 windows over two monthly Parquet objects
    slots = layout.slots_between(start, end)
    breach, gap, ledger_only = slots[5000], slots[9000], slots[-2]  # ledger_only: decided live, not in the Parquet yet
    prices = {slot: 100.0 + (index % 7) * 0.01 for index, slot in enumerate(slots)}
    prices[breach] = prices[breach - layout.SLOT] * 1.05
    del prices[gap], prices[ledger_only]
    for month in (6, 7):
        rows = [
            {"timestamp": slot, "weighted_average": price, "pair": PAIR, "source_key": f"k{slot:%d%H%M}",
             "source_format": "json", **dict.fromkeys(("open", "high", "low", "close", "volume", "quote_volume"), 1.0)}
            for slot, price in prices.items() if slot.month == month
        ]  # fmt: skip
        aws.put(layout.parquet_key(2019, month, pair=PAIR), parquet.parquet_bytes(rows))
    put_entry(aws, breach, prices[breach], prices[breach - layout.SLOT], "notified", sns_message_id="msg-40")
    put_entry(aws, ledger_only, 99.0, None, "no_previous_record", reason="written by a live run")

    data = browse.history(aws.s3, aws.config, RULES, start, end)
    details = {row["window_start"]: row for row in browse.ledger_details(aws.s3, aws.config, RULES, start, end)}

    listed = {row["window_start"]: row["decision"] for row in data["windows"]}
    back_down = breach + layout.SLOT
    assert listed == {layout.iso(breach): "pending", layout.iso(back_down): "pending"}
    assert sum(data["counts"].values()) == len(slots)
    assert data["unlisted_counts"] == {"below_threshold": len(slots) - 5, "missing": 2, "no_previous_record": 1}
    # The ledger's answer: the listed windows', and the entry of a window without a price (no gap: none).
    assert list(details) == [layout.iso(breach), layout.iso(back_down), layout.iso(ledger_only)]
    assert details[layout.iso(breach)]["decision"] == "notified"
    assert details[layout.iso(back_down)]["decision"] == "no_ledger_entry"
    assert details[layout.iso(ledger_only)]["reason"] == f"{RULE.name}: written by a live run"
    # The envelope: 1,200 steps of 10 windows (11,520 / 1,200 rounded up), each its lowest and highest price.
    envelope = data["envelope"]
    assert envelope["step_seconds"] == 10 * 300
    assert len(envelope["price"]) == 1152
    assert envelope["price"][0] == [100.0, 100.06]
    assert envelope["price"][500] == [100.0, prices[breach]]  # the breach's step reaches its price
    assert max(high for _low, high in envelope["change"] if high is not None) < 1.0  # quiet windows only
    # Bounded whatever the range: the newest MAX_LISTED of them.
    monkeypatch.setattr(browse, "MAX_LISTED", 1)
    assert [row["window_start"] for row in browse.history(aws.s3, aws.config, RULES, start, end)["windows"]] == [
        layout.iso(back_down)
    ]


def test_the_range_defaults_to_the_last_day_and_refuses_more_than_a_leap_year():
    now = utc(2026, 3, 5, 12, 3)

    assert browse.parse_range(None, None, now) == (utc(2026, 3, 4, 12, 5), utc(2026, 3, 5, 12, 5))
    assert browse.parse_range("2026-03-01T00:00Z", "2026-03-02T00:00:00+00:00", now) == (
        utc(2026, 3, 1),
        utc(2026, 3, 2),
    )
    assert browse.parse_range("2025-03-04T12:05Z", None, now) == (utc(2025, 3, 4, 12, 5), utc(2026, 3, 5, 12, 5))
    with pytest.raises(ValueError, match="366 days"):
        browse.parse_range("2025-01-01T00:00Z", "2026-03-01T00:00Z", now)
    with pytest.raises(ValueError, match="before"):
        browse.parse_range("2026-03-02T00:00Z", "2026-03-01T00:00Z", now)


def test_a_long_range_of_another_pair_waits_for_the_ledger_where_any_of_its_rules_fired(aws):
    """Review of one lane: over a long range a window was shown quiet when the pair's first rule was, so a
    crossing by a small move of a pair whose first rule is a 5 % change had no marker and no message id."""
    start = utc(2026, 3, 20, 0, 0)
    slots = layout.slots_between(start, start + timedelta(days=2))
    move = {"name": "move-5m", "kind": "change", "threshold_pct": 1.0}
    btc = [{"name": "move-5pct", "kind": "change", "threshold_pct": 5.0},
           {"name": "cross-100k", "kind": "crossing", "level": 100000}]  # fmt: skip
    rule_set = rules.parse({"default_pair": PAIR, "pairs": {PAIR: [move], "BTC/USDT": btc}})
    prices = {slot: 99990.0 + (20.0 if index >= 100 else 0.0) for index, slot in enumerate(slots)}  # crosses at 100
    rows = [
        {"timestamp": slot, "weighted_average": price, "pair": "BTC/USDT", "source_key": f"k{slot:%d%H%M}",
         "source_format": "json", **dict.fromkeys(("open", "high", "low", "close", "volume", "quote_volume"), 1.0)}
        for slot, price in prices.items()
    ]  # fmt: skip
    aws.put(layout.parquet_key(2026, 3, pair="BTC/USDT"), parquet.parquet_bytes(rows))

    data = browse.history(aws.s3, aws.config, rule_set, start, start + timedelta(days=2), "BTC/USDT")

    by_slot = {row["window_start"]: row for row in data["windows"]}
    assert data["mode"] == "parquet"
    assert by_slot[layout.iso(slots[100])]["decision"] == "pending"  # crossed: its ledger entry tells
    assert by_slot[layout.iso(slots[101])]["decision"] == "below_threshold"  # every rule quiet

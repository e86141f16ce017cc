"""The page's row of a pair's window, the default pair's included (``browse.row_from_entry``, the one row
builder): the deciding rule's figures and every rule that fired, sent or not (the page draws a marker for
each, one per rule whose decision is in ``analysis.FIRED``)."""

from __future__ import annotations

import json

from include.glue.price_glue import validation
from include.price_pipeline import alerts, analysis, browse, layout
from tests.conftest import utc

SLOT = utc(2026, 3, 24, 10, 0)


def entry(**decided: tuple[str, str]) -> dict:
    """A pair's ledger entry with each rule's (decision, direction)."""
    return {
        "pair": "BTC/USDT",
        "latest": {"weighted_average": 101000.0},
        "decision": "analysed",
        "rules": {
            name: {"decision": decision, "direction": direction, "reason": f"{name} says {decision}",
                   "change_pct": 2.0, "threshold_pct": 1.0}
            for name, (decision, direction) in decided.items()
        },
    }  # fmt: skip


def test_every_rule_that_fired_sent_or_not_is_listed_and_the_most_telling_one_decides_the_row():
    row = browse.row_from_entry(
        SLOT,
        entry(
            a=("below_threshold", "up"),
            b=("suppressed_cooldown", "up"),
            c=("notified", "down"),
            d=("below_min_abs_move", "up"),
            e=("suppressed_backfill", "up"),
            f=("suppressed_quiet_hours", "down"),
        ),
    )

    assert row["fired"] == [
        {"rule": "b", "direction": "up", "decision": "suppressed_cooldown"},
        {"rule": "c", "direction": "down", "decision": "notified"},
        {"rule": "e", "direction": "up", "decision": "suppressed_backfill"},
        {"rule": "f", "direction": "down", "decision": "suppressed_quiet_hours"},
    ]
    assert {marker["decision"] for marker in row["fired"]} <= set(analysis.FIRED)
    assert (row["decision"], row["reason"], row["price"]) == ("notified", "c: c says notified", 101000.0)


def test_a_window_where_no_rule_fired_has_no_marker():
    row = browse.row_from_entry(SLOT, entry(cross=("not_crossed", "up"), move=("below_threshold", "up")))

    assert row["fired"] == []
    assert row["decision"] == "not_crossed"


def test_a_damaged_objects_row_says_why_and_has_no_marker():
    row = browse.row_from_entry(SLOT, {"decision": browse.DAMAGED, "reason": "pairs.jsonl line 2: ..."})

    assert (row["decision"], row["reason"], row["fired"]) == (browse.DAMAGED, "pairs.jsonl line 2: ...", [])


def test_a_rule_claimed_or_due_but_not_yet_sent_has_a_marker_too():
    row = browse.row_from_entry(SLOT, entry(a=("publishing", "up"), b=("notify", "down"), c=("no_previous", "flat")))

    assert row["fired"] == [
        {"rule": "a", "direction": "up", "decision": "publishing"},
        {"rule": "b", "direction": "down", "decision": "notify"},
    ]
    assert (row["decision"], row["price"], row["change_pct"]) == ("publishing", 101000.0, 2.0)


def test_a_price_the_glue_job_took_as_the_typical_price_is_marked_an_approximation():
    """The exchange feed's record of an exchange without quote volume declares ``typical_price``: the Glue
    job's CSV row names that basis, the ledger's ``latest`` keeps it, the page row shows it. A price the
    record gave (or its volumes) is exact and the ledger line is as before (no ``basis``)."""
    aliases = json.loads(layout.FIELD_ALIASES_PATH.read_text())
    typical = {"date": int(SLOT.timestamp()), "open": 100.0, "high": 103.0, "low": 99.0, "close": 101.0,
               "quoteVolume": 5.0, "weightedAverageBasis": "typical_price"}  # fmt: skip
    given = {**typical, "weightedAverage": 102.0}
    del given["weightedAverageBasis"]
    shown = []
    for record in (typical, given):
        row = validation.normalize(
            record, aliases, "BTC/USDT", layout.ingestion_key(SLOT, ".json", pair="ETH/USDT"), "json"
        )
        [price] = analysis.parse_canonical_rows(validation.to_csv(row))
        latest = alerts._price(price)
        page_row = browse.row_from_entry(SLOT, {**entry(move=("below_threshold", "up")), "latest": latest})
        shown.append((latest.get("basis"), page_row["price"], page_row.get("price_basis")))
    assert shown == [("typical_price", 101.0, "typical_price"), (None, 102.0, None)]  # (103 + 99 + 101) / 3

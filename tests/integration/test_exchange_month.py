"""Issue 36: a month of two pairs fetched from the exchange stand-in with one damaged ETH/USDT candle a day,
normalized by the Glue job and decided by the bulk analysis (``history.backfill_history``) on the AWS
stand-in: exactly those 30 windows of ETH/USDT are lost, every other window of both pairs is decided.
About 3.5 minutes on two busy cores: a file of its own, so that xdist runs it beside the others."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from include.glue.price_glue import job
from include.price_pipeline import history, layout, ledger, rules, settings
from tests.conftest import utc
from tests.integration.test_exchange_answers import stamp
from tests.integration.test_exchange_feed import RULES, fetch

pytestmark = pytest.mark.integration


MONTH = utc(2026, 9, 1)  # a month no other test writes


def test_a_month_with_a_damaged_candle_a_day_loses_exactly_those_windows_and_decides_everything_else(aws, exchange):
    end = MONTH + timedelta(days=30)
    damaged = [MONTH + timedelta(days=day, minutes=5 * (37 * day % 288)) for day in range(30)]
    exchange.damage(*[
        {"pair": "ETH/USDT", "at": int(slot.timestamp() * 1000), "values": {"4": ("NaN", "1e309", "3_000.5")[n % 3]}}
        for n, slot in enumerate(damaged)
    ])  # fmt: skip
    started = time.monotonic()

    done, _ = fetch(aws, exchange.url, MONTH, end)
    fetched = time.monotonic()
    arguments = settings.glue_job_arguments(aws.config) | {"--window_start": layout.iso(MONTH),
                                                           "--window_end": layout.iso(end),
                                                           "--pairs": "ETH/USDT,BTC/USDT"}  # fmt: skip
    job.run(aws.s3, job.parse_args([item for pair in arguments.items() for item in pair]))
    normalized = time.monotonic()
    rule_set = rules.parse(RULES, "test")
    summary = history.backfill_history(aws.s3, aws.config, MONTH, end, rule_set, False, datetime.now(UTC))
    print(f"month of 2 pairs: fetch {fetched - started:.1f} s, Glue {normalized - fetched:.1f} s, "
          f"analysis {time.monotonic() - normalized:.1f} s")  # fmt: skip

    assert (len(done["ETH/USDT"].written), len(done["BTC/USDT"].written)) == (8640 - 30, 8640)
    assert len(done["ETH/USDT"].refused) == 30
    assert [line.split(": ")[0] for line in done["ETH/USDT"].refused] == [
        f"binance ETH/USDT {stamp(s)}" for s in damaged
    ]
    assert summary["pairs"]["ETH/USDT"]["windows"] == 8640 - 30
    assert summary["pairs"]["BTC/USDT"]["windows"] == 8640
    assert (summary["windows"], summary["windows_seen"], summary["quarantined"]) == (8640, 8640, 0)
    for slot in damaged[:3]:
        assert list(ledger.parse_entries(aws.get(layout.pairs_ledger_key(slot, aws.config.changes_prefix)))) == [
            "BTC/USDT"
        ]

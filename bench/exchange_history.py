"""``python -m bench.exchange_history [--days 30]``: a newly added pair's past, in one command.

On a local stack with the exchange stand-in (``local/exchange.py``: Binance's klines API, real candles),
one run of ``price_history_backfill`` with ``fetch_from_exchange`` over ``--days`` days of a pair that has
no record yet: its candles fetched in pages of 1,000 and written once, normalized by one Glue run, every
window decided. Prints a markdown table (command, machine, each task's seconds, the exchange requests) and
writes it to ``bench/results/exchange-history.md``. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import machine
from bench.pipeline import running

START = datetime(2025, 9, 1, tzinfo=UTC)
RULES = {
    "default_pair": "ETH/USDT",
    "pairs": {
        "ETH/USDT": [{"name": "move-5m", "kind": "change", "threshold_pct": 1.0, "minutes": 5, "tolerance_minutes": 55}]
    },  # fmt: skip
}
RESULTS = Path(__file__).with_name("results")


def log(message: str) -> None:
    print(f"[exchange-history {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args(argv)
    end = START + timedelta(days=args.days)
    started, load_start, m = datetime.now(UTC), machine.load_average(), machine.describe()
    with running("bench-exchange-", log=log, rules=RULES, exchange=True) as bench:
        log(f"price_history_backfill with fetch_from_exchange over {args.days} days of one pair ...")
        result = bench.bulk_backfill(START, end, fetch_from_exchange=True)
    summary = result["summary"] or {}
    lines = [
        f"### Exchange history, {args.days} days of one new pair ({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `python -m bench.exchange_history --days {args.days}`.  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}, {m['os']}; "
        f"load average at start {load_start}, at end {machine.load_average()}.",
        "",
        "| figure | result |",
        "|---|---|",
        f"| run state | {result['state']} |",
        f"| windows | {result['windows']:,} ({summary.get('windows_seen')} decided, {summary.get('missing')} missing, "
        f"{summary.get('quarantined')} quarantined) |",
        f"| whole run, queued to end | **{result['seconds']:.1f} s** |",
        f"| fetch_exchange_history (fetch in pages, write once) | {result['fetch_task_seconds']:.1f} s |",
        f"| normalize_price_history (one Glue run) | {result['glue_task_seconds']:.1f} s |",
        f"| analyse_price_history (decide, ledger, Parquet) | {result['analysis_task_seconds']:.1f} s |",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "exchange-history.md").write_text(table)
    return 0 if result["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())

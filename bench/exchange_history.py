"""``python -m bench.exchange_history [--days 30] [--pairs 1]``: newly added pairs' past, in one command.

On a local stack with the exchange stand-in (``local/exchange.py``: Binance's klines API, real candles),
one run of ``price_history_backfill`` with ``fetch_from_exchange`` over ``--days`` days of ``--pairs`` pairs
that have no record yet: their candles fetched in pages of 1,000 and written once, normalized by one Glue
run, every window decided. Prints a markdown table (command, machine, each task's seconds, the peak memory
of the Glue run and of the analysis) and writes it to ``bench/results/exchange-history[-<pairs>p-<days>d].md``.
Not a test.
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
RULE = {"name": "move-5m", "kind": "change", "threshold_pct": 1.0, "minutes": 5, "tolerance_minutes": 55}


def rules_document(pairs: int) -> dict:
    """ETH/USDT and ``pairs - 1`` more (``P001/USDT`` ...), each with the same rule."""
    names = ["ETH/USDT", *(f"P{index:03d}/USDT" for index in range(1, pairs))]
    return {"default_pair": "ETH/USDT", "pairs": {name: [RULE] for name in names}}


RESULTS = Path(__file__).with_name("results")


def log(message: str) -> None:
    print(f"[exchange-history {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=1)
    args = parser.parse_args(argv)
    end = START + timedelta(days=args.days)
    started, load_start, m = datetime.now(UTC), machine.load_average(), machine.describe()
    with running("bench-exchange-", log=log, rules=rules_document(args.pairs), exchange=True) as bench:
        log(f"price_history_backfill with fetch_from_exchange over {args.days} days of {args.pairs} pair(s) ...")
        result = bench.bulk_backfill(START, end, fetch_from_exchange=True)
        glue = bench.glue_summary(result["glue_run"]["id"])
    summary = result["summary"] or {}
    memory = glue.get("peak_memory_mib", {})
    lines = [
        f"### Exchange history, {args.days} days of {args.pairs} new pair(s) ({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `python -m bench.exchange_history --days {args.days} --pairs {args.pairs}`.  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}, {m['os']}; "
        f"load average at start {load_start}, at end {machine.load_average()}.",
        "",
        "| figure | result |",
        "|---|---|",
        f"| run state | {result['state']} |",
        f"| windows × pairs | {result['windows']:,} × {args.pairs} = {result['windows'] * args.pairs:,} pair-windows "
        f"({summary.get('windows_seen')} windows decided, {summary.get('missing')} missing, "
        f"{summary.get('quarantined')} quarantined) |",
        f"| whole run, queued to end | **{result['seconds']:.1f} s** |",
        f"| fetch_exchange_history (fetch in pages, write once) | {result['fetch_task_seconds']:.1f} s |",
        f"| normalize_price_history (one Glue run) | {result['glue_task_seconds']:.1f} s |",
        f"| analyse_price_history (decide, ledger, Parquet) | {result['analysis_task_seconds']:.1f} s |",
        f"| peak memory, Glue run (job process; largest worker process) | {memory.get('job')} MiB; "
        f"{memory.get('largest_worker')} MiB |",
        f"| peak memory, analysis task process | {summary.get('peak_memory_mib')} MiB |",
        f"| pair-windows a second, whole run | {result['windows'] * args.pairs / result['seconds']:,.0f} |",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    name = "exchange-history" + ("" if (args.pairs, args.days) == (1, 30) else f"-{args.pairs}p-{args.days}d")
    (RESULTS / f"{name}.md").write_text(table)
    return 0 if result["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench.exchange_feed [--pairs 1000] [--round-trip 0.1 0.25]``: one live window of many pairs.

The exchange feed's fetch of one closed window (``exchange.write_candles``, as ``price_exchange_feed`` runs
it) for ``--pairs`` pairs of one exchange: the exchange stand-in (``local/exchange.py``, Binance's klines API)
answering each request ``--round-trip`` seconds late (a far exchange), the records written to S3 on moto's
server on loopback. For each round trip: seconds from the fetch's start to the last record written, klines
requests, the most answered at once, with the workers of one exchange (``WORKERS_PER_EXCHANGE``), and at the
first round trip with one (the feed before it had workers). Writes ``bench/results/exchange-feed.md``. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import machine
from include.price_pipeline import exchange, layout, rules, settings
from local.stack import free_port

SLOT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
RESULTS = Path(__file__).with_name("results")


def log(message: str) -> None:
    print(f"[exchange-feed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure(s3, config, standin, count: int, round_trip: float, workers: int, slot: datetime) -> dict:
    pairs = {f"P{index:04d}/USDT": [{"name": "move", "kind": "change", "threshold_pct": 1.0}] for index in range(count)}
    rule_set = rules.parse({"default_pair": "P0000/USDT", "pairs": pairs}, "bench")
    standin.fault("delayed", 10_000, seconds=round_trip)
    before = standin.requests()
    exchange.WORKERS_PER_EXCHANGE = workers
    started = time.monotonic()
    done = exchange.write_candles(s3, config, rule_set, slot, slot + layout.SLOT, slot + timedelta(minutes=6))
    seconds = time.monotonic() - started
    written = sum(len(fetched.written) for fetched in done.values())
    problems = sum(len(fetched.problems) for fetched in done.values())
    requests = standin.requests() - before
    return {"pairs": count, "round_trip": round_trip, "workers": workers, "seconds": seconds, "written": written,
            "problems": problems, "requests": requests, "most_at_once": standin.most_at_once()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.conftest import ExchangeStandin

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--round-trip", type=float, nargs="+", default=[0.1, 0.25])
    args = parser.parse_args(argv)
    started, load_start, m = datetime.now(UTC), machine.load_average(), machine.describe()
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    standin = ExchangeStandin()
    try:
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip
        config = replace(settings.load({}), exchange_url=standin.url)
        s3.create_bucket(Bucket=config.bucket)
        rows, parallel = [], exchange.WORKERS_PER_EXCHANGE
        for index, round_trip in enumerate(args.round_trip):
            for workers in (parallel, 1)[: 1 if index else 2]:  # one worker: at the first round trip only
                slot = SLOT + layout.SLOT * (2 * index + (workers == 1))  # a window of its own: nothing present
                log(f"{args.pairs} pairs, round trip {round_trip} s, {workers} worker(s) ...")
                rows.append(measure(s3, config, standin, args.pairs, round_trip, workers, slot))
                log(f"  {rows[-1]['seconds']:.1f} s, {rows[-1]['written']} written")
    finally:
        standin.server.shutdown()
        server.stop()
    lines = [
        f"### Exchange feed, one live window of {args.pairs:,} pairs ({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `python -m bench.exchange_feed {' '.join(argv or sys.argv[1:])}`.  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}, {m['os']}; "
        f"load average at start {load_start}, at end {machine.load_average()}.",
        "",
        "| Pairs | Exchange round trip | Workers | Last record written | Written | Problems | Klines requests "
        "| Most at once |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['pairs']:,} | {r['round_trip']:g} s | {r['workers']} | **{r['seconds']:.1f} s** | {r['written']:,} "
            f"| {r['problems']} | {r['requests']:,} | {r['most_at_once']} |"
            for r in rows
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "exchange-feed.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

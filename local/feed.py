"""Local price feed: one record per 5-minute window under the ingestion prefix.

Two sources:
- a seeded synthetic random walk (default): the record of a slot depends only on the seed and the
  slot, so writing a window twice writes the same bytes; about one window in eight jumps past the
  default 1 % threshold;
- a replay of a Poloniex-format CSV (``--replay``), either shifted so its rows land on the current
  windows, or at the rows' own timestamps (``--original-times``, for backfill demos).

Records rotate through JSON, CSV, XML and key=value text, as a real multi-producer feed would.

Every other pair of the rules file (``PRICE_RULES_FILE``) gets a record per window too, under its own
key (``<slot>/<BASE>_<QUOTE>.<ext>``), made to show its rules firing within minutes (``pair_record``):
a pair with a ``crossing`` rule swings around the level (one crossing every 10 minutes), any other
steps by 1.2 % every 10 minutes (a 15-minute change above 0.8 % every 10 minutes, alternately up and down).

    python -m local.feed --endpoint http://127.0.0.1:4566 [--state-dir .local] [--replay FILE] [--once]

It signs with the stand-in's credentials of the state folder (default ``.local``, make run's).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import escape

from include.price_pipeline import layout, settings

FIELDS = ("date", "high", "low", "open", "close", "volume", "quoteVolume", "weightedAverage")
FORMATS = ("json", "csv", "xml", "txt")


def synthetic_record(slot: datetime, seed: int = 7, start_price: float = 3000.0) -> dict:
    """The random-walk record of ``slot``: a function of (seed, slot) alone."""
    day = slot.replace(hour=0, minute=0, second=0)
    rng = random.Random(f"{seed}:{day:%Y%m%d}")  # noqa: S311 - demo data, not security
    price = start_price * (1 + rng.uniform(-0.05, 0.05))
    steps = int((slot - day).total_seconds() // layout.SLOT_SECONDS) + 1
    for _ in range(steps):
        jump = rng.random() < 0.125
        price *= 1 + (rng.choice((-1, 1)) * rng.uniform(0.012, 0.03) if jump else rng.gauss(0, 0.002))
        volume = rng.uniform(20, 200)
    spread = price * rng.uniform(0.0005, 0.004)
    return {
        "date": int(slot.timestamp()),
        "high": round(price + spread, 8),
        "low": round(price - spread, 8),
        "open": round(price + rng.uniform(-spread, spread), 8),
        "close": round(price + rng.uniform(-spread, spread), 8),
        "volume": round(volume * price, 8),
        "quoteVolume": round(volume, 8),
        "weightedAverage": round(price, 8),
    }


#: Demo price levels of pairs without a crossing rule (others: 100).
PAIR_BASE = {"BTC/USDT": 90000.0, "ETH/USDT": 3000.0, "SOL/USDT": 150.0}
#: Four-window cycles of another pair's price, relative to its base (see the module docstring).
CROSSING_CYCLE = (1.004, 1.002, 0.998, 0.996)
STEP_CYCLE = (1.0, 1.0, 1.012, 1.012)


def pair_record(slot: datetime, pair: str, pair_rules, seed: int = 7) -> dict:
    """The demo record of another pair for ``slot``: a function of (pair, rules, seed, slot) alone."""
    crossing = next((rule for rule in pair_rules if rule.kind == "crossing"), None)
    base, cycle = (crossing.level, CROSSING_CYCLE) if crossing else (PAIR_BASE.get(pair, 100.0), STEP_CYCLE)
    rng = random.Random(f"{seed}:{pair}:{layout.slot_stamp(slot)}")  # noqa: S311 - demo data, not security
    price = base * cycle[int(slot.timestamp()) // layout.SLOT_SECONDS % len(cycle)] * (1 + rng.gauss(0, 0.0002))
    spread, volume = price * 0.0005, rng.uniform(20, 200)
    return {
        "date": int(slot.timestamp()),
        "high": round(price + spread, 8),
        "low": round(price - spread, 8),
        "open": round(price, 8),
        "close": round(price, 8),
        "volume": round(volume * price, 8),
        "quoteVolume": round(volume, 8),
        "weightedAverage": round(price, 8),
    }


def render(record: dict, fmt: str) -> bytes:
    """A record in one of the producer formats the Glue job reads."""
    if fmt == "json":
        return json.dumps(record).encode()
    if fmt == "csv":
        return (",".join(FIELDS) + "\n" + ",".join(str(record[f]) for f in FIELDS) + "\n").encode()
    if fmt == "xml":
        inner = "".join(f"<{f}>{escape(str(record[f]))}</{f}>" for f in FIELDS)
        return f'<?xml version="1.0" encoding="UTF-8"?><record>{inner}</record>'.encode()
    if fmt == "txt":
        return "\n".join(f"{f}={record[f]}" for f in FIELDS).encode() + b"\n"
    raise ValueError(f"unknown format {fmt!r}")


def format_for(slot: datetime) -> str:
    """Rotate formats by slot, deterministically."""
    digest = hashlib.sha256(layout.slot_stamp(slot).encode()).digest()
    return FORMATS[digest[0] % len(FORMATS)]


def write_record(
    s3, bucket: str, record: dict, fmt: str | None = None, prefix: str = layout.INGESTION_PREFIX, *, pair: str
) -> str:
    """Write ``record`` as ``pair``'s under its slot's ingestion key; return the key."""
    slot = datetime.fromtimestamp(int(float(record["date"])), tz=UTC)
    fmt = fmt or format_for(slot)
    key = layout.ingestion_key(slot, f".{fmt}", prefix, pair=pair)
    s3.put_object(Bucket=bucket, Key=key, Body=render(record, fmt))
    return key


def replay_rows(path: str) -> list[dict]:
    """Rows of a Poloniex-format CSV, numbers as floats (date as int)."""
    with open(path, newline="") as handle:
        return [{f: int(row[f]) if f == "date" else float(row[f]) for f in FIELDS} for row in csv.DictReader(handle)]


def shifted(rows: list[dict], first_slot: datetime) -> Iterator[dict]:
    """The rows moved in time so that row i lands on ``first_slot + i * 5 min``."""
    for index, row in enumerate(rows):
        yield {**row, "date": int((first_slot + layout.SLOT * index).timestamp())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--endpoint", default="http://127.0.0.1:4566", help="AWS stand-in URL")
    parser.add_argument("--state-dir", type=Path, help="the stand-in's state folder (default: make run's)")
    parser.add_argument("--replay", help="Poloniex-format CSV to replay instead of the random walk")
    parser.add_argument("--original-times", action="store_true", help="replay at the rows' own timestamps")
    parser.add_argument("--history-windows", type=int, default=12, help="past windows to write at start")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--once", action="store_true", help="write the history and exit")
    args = parser.parse_args(argv)

    from local.standin import DEFAULT_STATE_DIR, client, credentials

    config = settings.load()
    rule_set = settings.load_rules(config)
    default = rule_set.default_pair  # the replayed or random-walk records; the other pairs' follow their rules
    others = {pair: rules for pair, rules in rule_set.pairs.items() if pair != default}
    s3 = client("s3", args.endpoint, credentials(args.state_dir or DEFAULT_STATE_DIR))
    if args.replay and args.original_times:
        for row in replay_rows(args.replay):
            write_record(s3, config.bucket, row, prefix=config.ingestion_prefix, pair=default)
        return 0

    current = layout.slot_start(datetime.now(UTC)) - layout.SLOT  # the latest window that has ended
    first = current - layout.SLOT * (args.history_windows - 1)
    replay = iter(shifted(replay_rows(args.replay), first)) if args.replay else None

    def record_for(slot: datetime) -> dict:
        return next(replay) if replay else synthetic_record(slot, args.seed)

    slot = first
    while True:
        while slot <= current:
            for pair, pair_rules in others.items():  # before the default pair's record, which starts the run
                record = pair_record(slot, pair, pair_rules, args.seed)
                write_record(s3, config.bucket, record, prefix=config.ingestion_prefix, pair=pair)
            key = write_record(s3, config.bucket, record_for(slot), prefix=config.ingestion_prefix, pair=default)
            print(f"feed: wrote {key}", flush=True)
            slot += layout.SLOT
        if args.once:
            return 0
        current = layout.slot_start(datetime.now(UTC)) - layout.SLOT
        time.sleep(5)


if __name__ == "__main__":
    sys.exit(main())

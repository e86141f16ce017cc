"""``python -m bench.latency``: record-to-alert latency of live windows alone, step by step.

Starts its own local stack (as ``make bench`` does), runs ``--windows`` live windows of
price_notification and prints, per window, the seconds from the record landing to each step (sensor
done, Glue task and job run, compute, publish, alert in the subscriber queue), then the
median/min/max. ``--glue-startup-ms`` runs the same windows again with the stand-in holding each Glue
job run that long before its script starts (the model of Glue's start-up on AWS). Settings such as
``PRICE_SENSOR_POKE_SECONDS`` come from the environment, as for the stack. Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import machine
from bench.pipeline import GLUE_STARTUP_MODEL_MS, running
from bench.report import latency_steps

FIRST = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)


def log(message: str) -> None:
    print(f"[latency {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=9)
    parser.add_argument(
        "--glue-startup-ms",
        type=int,
        nargs="?",
        const=GLUE_STARTUP_MODEL_MS,
        default=0,
        help=f"also measure with this Glue start-up (alone: the model, {GLUE_STARTUP_MODEL_MS} ms)",
    )
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    parser.add_argument("--keep-state", action="store_true", help="keep the stack's state folder (task logs)")
    args = parser.parse_args(argv)
    results = {"load_start": machine.load_average()}
    with running("price-latency-", log, args.keep_state) as bench:
        results["latency"] = bench.live_latency(FIRST, args.windows, record_requests=False)
        print(latency_steps(results["latency"]), flush=True)
        if args.glue_startup_ms:
            later = FIRST + timedelta(days=1)  # other windows than the first pass
            results["with_glue_startup"] = bench.live_latency_glue_startup(later, args.windows, args.glue_startup_ms)
            print(f"\nwith glue_startup_ms={args.glue_startup_ms}:", flush=True)
            print(latency_steps(results["with_glue_startup"]), flush=True)
    results["load_end"] = machine.load_average()
    print(f"\nload average at start {results['load_start']}, at end {results['load_end']}")
    if args.output:
        args.output.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

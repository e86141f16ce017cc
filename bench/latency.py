"""``python -m bench.latency``: record-to-alert latency of live windows alone, step by step.

Starts its own local stack (as ``make bench`` does), runs ``--windows`` live windows of
price_notification and prints, per window, the seconds from the record landing to each step (sensor
done, Glue task and job run, compute, is_alert_due, publish, alert in the subscriber queue), then the
median/min/max. ``--glue-startup-ms`` runs the same windows again with the stand-in holding each Glue
job run that long before its script starts (the model of Glue's start-up on AWS). Settings such as
``PRICE_SENSOR_POKE_SECONDS`` come from the environment, as for the stack. Not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import machine
from bench.pipeline import TIMELINE, Bench
from local.faults import set_faults

FIRST = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
#: Glue Python shell start-up on AWS as the stand-in models it (seconds before the script runs).
GLUE_STARTUP_MODEL_MS = 20000


def log(message: str) -> None:
    print(f"[latency {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def table(latency: dict) -> str:
    labels = [label for label, _, _ in TIMELINE] + ["alert in SQS"]
    lines = ["| Window | Landed after deferral | " + " | ".join(labels) + " |", "|---|" + "---:|" * (len(labels) + 1)]
    for w in latency["windows"]:
        cells = ["n/a" if w["timeline"][k] is None else f"{w['timeline'][k]:.1f}" for k in labels]
        lines.append(f"| {w['window']} | {w['landed_after_deferral_seconds']:.1f} | " + " | ".join(cells) + " |")
    lines.append(
        f"\nmedian {latency['median_seconds']:.1f} s, min {latency['min_seconds']:.1f} s, "
        f"max {latency['max_seconds']:.1f} s over {len(latency['windows'])} windows"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=9)
    parser.add_argument("--glue-startup-ms", type=int, default=0, help="also measure with this Glue start-up")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    parser.add_argument("--keep-state", action="store_true", help="keep the stack's state folder (task logs)")
    args = parser.parse_args(argv)
    state_dir = Path(tempfile.mkdtemp(prefix="price-latency-"))
    bench = Bench(state_dir, log=log)
    results = {"load_start": machine.load_average()}
    try:
        bench.start()
        results["latency"] = bench.live_latency(FIRST, args.windows, record_requests=False)
        print(table(results["latency"]), flush=True)
        if args.glue_startup_ms:
            set_faults(bench.stack.standin_url, f"glue_startup_ms={args.glue_startup_ms}")
            later = FIRST + timedelta(days=1)  # other windows than the first pass
            results["with_glue_startup"] = bench.live_latency(later, args.windows, record_requests=False)
            set_faults(bench.stack.standin_url, "off")
            print(f"\nwith glue_startup_ms={args.glue_startup_ms}:", flush=True)
            print(table(results["with_glue_startup"]), flush=True)
    finally:
        bench.stop()
        if args.keep_state:
            log(f"state (logs, database) kept in {state_dir}")
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
    results["load_end"] = machine.load_average()
    print(f"\nload average at start {results['load_start']}, at end {results['load_end']}")
    if args.output:
        args.output.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

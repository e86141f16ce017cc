"""``make bench`` / ``python -m bench [--quick]``: every performance and cost figure, one report.

Figures: bulk backfill of 1 and 30 days against native per-window backfill, live latency from a record
landing to the alert in the subscriber queue, DAG parse time, normalization throughput, the stand-in's
S3 listing with and without its index (``bench/listing.py``), AWS cost per month, and the same for 1, 10
and 100 pairs side by side (``bench/pairs.py``, stacks of their own). The full run takes about an hour
on a 2-core machine; ``--quick`` (1 and 3 days, 6 native windows, 3 latency windows, 1 and 10 pairs)
takes a quarter of that. Not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import cost, listing, machine, pairs, report, throughput, ui
from bench.pipeline import GLUE_STARTUP_MODEL_MS, Bench, Disrupted, running
from include.price_pipeline import layout

RESULTS = Path(__file__).with_name("results")
DAY = timedelta(days=1)

FULL = {
    "bulk_days": (1, 30),
    "native_windows": 24,
    "latency_windows": 9,
    "throughput_records": 8640,
    "listing_keys": (10_000, 100_000),
}
QUICK = {
    "bulk_days": (1, 3),
    "native_windows": 6,
    "latency_windows": 3,
    "throughput_records": 2000,
    "listing_keys": (10_000,),
}
#: Distinct days for each measurement, so no run sees another's records.
BULK_STARTS = {1: datetime(2025, 5, 10, tzinfo=UTC)}
MULTI_DAY_START = datetime(2025, 4, 1, tzinfo=UTC)  # 30 days = all of April: one Parquet month
NATIVE_START = datetime(2025, 5, 20, 0, 0, tzinfo=UTC)
LATENCY_START = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
LATENCY_GLUE_STARTUP_START = datetime(2025, 6, 3, 12, 0, tzinfo=UTC)
NATIVE_ATTEMPTS = 3
#: S3 requests a bulk run makes per window: the Glue job's GET of the raw record and PUT of its CSV, the
#: analysis's PUT of the ledger entry (the CSVs come back in one range object, not one GET each).
S3_REQUESTS_PER_WINDOW = 3


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run: 1 and 3 days, fewer windows")
    parser.add_argument("--output", type=Path, help="report path (default bench/results/latest.md or quick.md)")
    parser.add_argument("--keep-state", action="store_true", help="keep the stack's state folder (logs) afterwards")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started, wall = datetime.now(UTC), time.monotonic()
    results = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "command": shlex.join([_relative(sys.executable), "-m", "bench", *argv]),
        "machine": machine.describe(),
        "load_start": machine.load_average(),
        "plan": plan,
    }

    log(f"normalization throughput over {plan['throughput_records']:,} records ...")
    results["throughput"] = throughput.parse_and_normalize(throughput.mixed_objects(plan["throughput_records"]))
    log(f"S3 listing with and without the stand-in's index, buckets of {plan['listing_keys']} keys ...")
    results["listing"] = listing.measure(list(plan["listing_keys"]), repeat=5)

    output = args.output or RESULTS / ("quick.md" if args.quick else "latest.md")
    try:
        with running("price-bench-", log, args.keep_state) as bench:
            try:
                measure(bench, plan, results)
            finally:
                results["restarts"] = bench.restarts
    except BaseException:
        partial = output.with_suffix(".partial.json")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(results, indent=1, default=str) + "\n")
        log(f"stopped early; the figures measured so far are in {partial}")
        raise

    log("pairs: 1, 10 and 100 pairs on stacks of their own ..." if not args.quick else "pairs: 1 and 10 pairs ...")
    results["pairs"] = pairs.run(quick=args.quick, keep_state=args.keep_state)
    results["load_end"] = machine.load_average()
    results["wall_seconds"] = time.monotonic() - wall
    results |= derived(results)
    text = (
        report.render(results)
        + ui.report(results.get("ui"))
        + listing.report(results.get("listing"))
        + pairs.report(results["pairs"])
    )
    print(text)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    output.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    log(f"report written to {output}")
    return 0


def measure(bench: Bench, plan: dict, results: dict) -> None:
    """Every figure that needs the stack, in an order that keeps runs from overlapping, into ``results``
    as soon as each is measured."""
    multi_days = plan["bulk_days"][1]
    ranges = [
        (1, BULK_STARTS[1], BULK_STARTS[1] + DAY),
        (multi_days, MULTI_DAY_START, MULTI_DAY_START + multi_days * DAY),
    ]
    native_days = [NATIVE_START + DAY * attempt for attempt in range(NATIVE_ATTEMPTS)]
    native_slots = [
        slot
        for first in native_days
        for slot in layout.slots_between(first - 13 * layout.SLOT, first + (plan["native_windows"] + 2) * layout.SLOT)
    ]
    for days, start, end in ranges:
        log(f"writing {days * 288:,} raw records in rotating formats ({start:%Y-%m-%d} + {days} d) ...")
        bench.write_history(layout.slots_between(start, end))
    bench.write_history(native_slots)

    log("stand-in request rate ...")
    results["standin_rate"] = bench.standin_rate()

    results["bulk"] = bulk = []
    for days, start, end in ranges:
        log(f"bulk backfill of {days} day(s) through the scheduler ...")
        result = bench.bulk_backfill(start, end)
        log(f"  {result['state']} in {result['seconds']:.1f} s")
        bulk.append({"days": days, **result})

    log(f"Price alerts page over the {multi_days}-day range, request to drawn chart ...")
    results["ui"] = ui.render_times(bench.stack, ranges[-1][1], ranges[-1][2])
    log(f"  {results['ui']}")

    for attempt, first in enumerate(native_days, 1):
        log(f"native backfill of {plan['native_windows']} windows from {first:%Y-%m-%d %H:%M} ...")
        try:
            native = bench.native_backfill(first, plan["native_windows"])
            break
        except Disrupted as disrupted:
            # A component that died during the measurement was restarted: measure again elsewhere.
            log(f"  disrupted ({disrupted}); attempt {attempt} of {NATIVE_ATTEMPTS}")
            if attempt == NATIVE_ATTEMPTS:
                raise
    results["native"] = native | {"attempt": attempt}
    log(f"  {native['states']} in {native['seconds']:.1f} s")

    log(f"live latency over {plan['latency_windows']} windows (+1 recorded for request counts) ...")
    results["latency"] = latency = bench.live_latency(LATENCY_START, plan["latency_windows"])
    log(f"  median {latency['median_seconds']:.1f} s, max {latency['max_seconds']:.1f} s")
    windows, model = plan["latency_windows"], GLUE_STARTUP_MODEL_MS
    log(f"live latency over {windows} windows with Glue start-up modelled ({model} ms) ...")
    started = bench.live_latency_glue_startup(LATENCY_GLUE_STARTUP_START, windows, model)
    results["latency_glue_startup"] = started
    log(f"  median {started['median_seconds']:.1f} s, max {started['max_seconds']:.1f} s")

    log("parse times and the Glue job configuration ...")
    results["parse"] = bench.parse_times()
    results["glue_job"] = bench.glue_job()


def derived(results: dict) -> dict:
    """Ratios, target verdicts, end-to-end Glue throughput and the cost model."""
    bulk, native = results["bulk"], results["native"]
    longest = max(bulk, key=lambda b: b["windows"])
    ratio = native["seconds_per_window"] / longest["seconds_per_window"]
    glue_rows = (longest["summary"] or {}).get("windows_seen", 0)
    glue_seconds = longest["glue_run"]["seconds"] or float("nan")
    summary = longest["summary"] or {}
    publish_share = summary.get("breaches", 0) / max(1, summary.get("windows_seen", 1))
    window = results["latency"]["request_window"]
    prices = cost.load_prices()
    requests = {s: dict(ops) for s, ops in window["requests"]["by_service"].items()}
    publishes = requests.get("sns", {}).pop("Publish", 0)
    monthly = cost.monthly(
        prices,
        results["glue_job"],
        requests,
        glue_seconds=window["glue_run"]["seconds"] or 0,
        publishes_per_window=publish_share * max(1, publishes),
        stored_bytes_per_window=sum(window["object_bytes"].values()),
        log_bytes_per_run=window["glue_log_bytes"],
    )
    rate = results["standin_rate"]
    per_request = (1 / rate["get_per_second"] + 1 / rate["put_per_second"]) / 2
    floor = S3_REQUESTS_PER_WINDOW * longest["windows"] * per_request
    if longest["windows"] >= 8640:
        thirty = "met" if longest["seconds"] < 120 else "not met"
        thirty_note = (
            f"{longest['seconds']:.1f} s for {longest['windows']:,} windows on this machine "
            f"({S3_REQUESTS_PER_WINDOW} S3 requests per window: {floor:.0f} s at the stand-in's rate for one client)"
        )
    else:
        thirty = "not measured (--quick)"
        thirty_note = f"the quick run's longest range is {longest['days']} days"
    return {
        "standin_floor_seconds": floor,
        "glue_e2e": {"rows": glue_rows, "seconds": glue_seconds, "records_per_second": glue_rows / glue_seconds},
        "publish_share": publish_share,
        "prices": {k: prices[k] for k in ("region", "recorded", "note", "source")},
        "prices_assumed_log_bytes": prices["assumptions"]["glue_service_log_bytes_per_run"],
        "cost": monthly,
        "targets": {
            "thirty_days": thirty,
            "thirty_days_note": thirty_note,
            "speedup": ("met" if ratio >= 100 else "not met") + f" ({ratio:,.0f}×)",
            "speedup_note": f"bulk {longest['days']} d vs native {native['runs']} windows",
        },
    }


def _relative(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


if __name__ == "__main__":
    sys.exit(main())

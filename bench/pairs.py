"""``python -m bench.pairs [--quick] [--counts 10]``: what more pairs cost, side by side in one run.

For 1, 10 and 100 pairs (the default pair plus others, each with the default pair's rule: |change| > 1 %
over 5 minutes), each on a local stack of its own with a rules file of that many pairs:

- record-to-alert latency of a live window where every pair fires (a market-wide move, the worst case
  for the publish task): from the default pair's record, which lands last, to the window's last alert;
- the AWS requests of one window, recorded by the stand-in for a window where no pair fires and for one
  where every pair fires;
- the monthly AWS cost from those counts (``bench/cost.py``): a quiet window's requests every window, plus
  each alert's own requests for the share of windows that alert on the repository's real 5-minute data;
- and, on the 10-pair stack, the bulk backfill of 30 days (every pair's records, one Glue run).

``make bench`` runs this after its own figures and adds the table to its report. ``--counts`` measures only
the pair counts named (``--counts 10``: the 10-pair row and its 30-day bulk backfill) into a report of its
own, ``pairs-10.md``. Not a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import cost, machine
from bench.pipeline import Bench, running
from include.price_pipeline import layout

COUNTS = (1, 10, 100)
QUICK_COUNTS = (1, 10)
BULK_PAIRS = 10
LATENCY_START = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
BULK_START = datetime(2025, 8, 1, tzinfo=UTC)  # 30 days of August: one Parquet month per pair
RULE = {"name": "move-5m", "kind": "change", "threshold_pct": 1.0, "minutes": 5, "tolerance_minutes": 55}
REAL_DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "poloniex"
RESULTS = Path(__file__).with_name("results")


def log(message: str) -> None:
    print(f"[pairs {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rules_document(count: int) -> dict:
    """A rules file of ``count`` pairs: ETH/USDT (the default) and ``P001/USDT`` ... with the same rule."""
    pairs = {"ETH/USDT": [{**RULE, "min_abs_move": 0, "cooldown_minutes": 0}]}
    pairs |= {f"P{index:03d}/USDT": [RULE] for index in range(1, count)}
    return {"default_pair": "ETH/USDT", "pairs": pairs}


def alert_share(threshold_pct: float = RULE["threshold_pct"]) -> float:
    """Share of consecutive 5-minute windows of the repository's real data whose |change| is above the
    threshold: how often a pair's rule fires, for the cost of alerts."""
    (path,) = REAL_DATA.glob("*.csv")
    with path.open(newline="") as handle:
        rows = sorted((int(row["date"]), float(row["weightedAverage"])) for row in csv.DictReader(handle))
    pairs = [(a, b) for a, b in zip(rows, rows[1:], strict=False) if b[0] - a[0] == layout.SLOT_SECONDS]
    return sum(abs(b[1] / a[1] - 1) * 100 > threshold_pct for a, b in pairs) / len(pairs)


def blended_requests(quiet: dict, firing: dict, share: float, scale: float = 1.0) -> dict[str, dict[str, float]]:
    """Requests of an average window: the quiet window's, plus ``share`` of what a window where every pair
    fires adds (each alert's publish and ledger writes scale with the alerts): ``scale`` times what the
    recorded firing window added, when only ``1 / scale`` of its pairs fired."""
    out: dict[str, dict[str, float]] = {}
    for service in sorted(set(quiet) | set(firing)):
        operations = set(quiet.get(service, {})) | set(firing.get(service, {}))
        out[service] = {}
        for operation in sorted(operations):
            base = quiet.get(service, {}).get(operation, 0)
            out[service][operation] = base + share * scale * max(0, firing.get(service, {}).get(operation, 0) - base)
    return out


def monthly_cost(latency: dict, job: dict, share: float, scale: float = 1.0) -> dict:
    quiet, firing = latency["quiet_window"], latency["request_window"]
    requests = blended_requests(quiet["requests"]["by_service"], firing["requests"]["by_service"], share, scale)
    publishes = requests.get("sns", {}).pop("Publish", 0)
    return cost.monthly(
        cost.load_prices(),
        job,
        requests,
        glue_seconds=quiet["glue_run"]["seconds"] or 0,
        publishes_per_window=publishes,
        stored_bytes_per_window=sum(quiet["object_bytes"].values()),
        log_bytes_per_run=quiet["glue_log_bytes"],
    )


def measure(count: int, windows: int, bulk_days: int | None, keep_state: bool = False,
            firing: int | None = None, executor: str = "LocalExecutor") -> dict:  # fmt: skip
    """Every figure of one pair count, on a stack of its own (``firing``: pairs that move in a firing window;
    ``executor``: the stack's)."""
    out: dict = {"pairs": count, "firing": min(firing or count, count), "executor": executor}
    with running(f"price-bench-pairs{count}-", log, keep_state, rules=rules_document(count),
                 executor=executor) as bench:  # fmt: skip
        log(f"{count} pairs: live latency over {windows} windows (+2 recorded for request counts) ...")
        out["latency"] = latency = bench.live_latency(LATENCY_START, windows, firing=out["firing"])
        log(f"  median {latency['median_seconds']:.1f} s, max {latency['max_seconds']:.1f} s")
        out["glue_job"] = bench.glue_job()
        out["analysis_peak_mib"] = bench.task_peak_memory_mib("analyse_pairs")
        if bulk_days:
            start = BULK_START
            end = start + timedelta(days=bulk_days)
            slots = layout.slots_between(start, end)
            log(f"{count} pairs: writing {len(slots) * count:,} raw records ({bulk_days} d) ...")
            bench.write_history(slots)
            log(f"{count} pairs: bulk backfill of {bulk_days} days through the scheduler ...")
            out["bulk"] = bulk = bench.bulk_backfill(start, end) | {"days": bulk_days}
            bulk["parquet_objects"] = parquet_objects(bench)
            log(f"  {bulk['state']} in {bulk['seconds']:.1f} s")
        out["restarts"] = bench.restarts
    return out


def parquet_objects(bench: Bench) -> int:
    listed = bench.s3.list_objects_v2(Bucket=bench.config.bucket, Prefix=layout.PARQUET_PREFIX)
    return sum(item["Key"].endswith(".parquet") for item in listed.get("Contents", []))


def run(quick: bool = False, keep_state: bool = False, counts: tuple[int, ...] | None = None,
        firing: int | None = None, executors: tuple[str, ...] = ("LocalExecutor",)) -> dict:  # fmt: skip
    counts = counts or (QUICK_COUNTS if quick else COUNTS)
    windows = 1 if quick else 3
    bulk_days = 1 if quick else 30
    share = alert_share()
    results = {"counts": counts, "alert_share": share, "load_start": machine.load_average(), "rows": []}
    for count in counts:
        for executor in executors:
            bulk = bulk_days if count == BULK_PAIRS and executor == executors[0] else None
            row = measure(count, windows, bulk, keep_state, firing, executor)
            row["cost"] = monthly_cost(row["latency"], row["glue_job"], share, row["pairs"] / row["firing"])
            results["rows"].append(row)
    results["load_end"] = machine.load_average()
    return results


def _requests(latency: dict, kind: str) -> dict[str, int]:
    by_service = latency[kind]["requests"]["by_service"]
    return {service: sum(operations.values()) for service, operations in by_service.items()}


def report(results: dict | None) -> str:
    """The markdown section of ``make bench``'s report."""
    if not results:
        return ""
    rows = results["rows"]
    base = rows[0]["cost"]["python_shell_total"]
    lines = [
        "",
        "## Many pairs: latency, requests and cost by pair count",
        "",
        f"`python -m bench.pairs` (part of `make bench`): a stack of its own per pair count, a rules file of that "
        f"many pairs (ETH/USDT + P001/USDT ..., each |change| > 1 % over 5 min; the firing window moves the pairs "
        "in brackets, every pair unless `--firing` says). Load average at start "
        f"{results['load_start']}, at end {results['load_end']}. Latency: a live window where those pairs fire, "
        "from the default pair's record (which lands last) to the window's last alert in SQS; a quiet window is "
        "decided when its analysis task ends (ledger written). Requests: the stand-in's recording of one window "
        "where no pair fires / one where those fire. Cost per month: "
        f"the quiet window's requests every window plus each alert's own for {results['alert_share']:.1%} of "
        "pair-windows (the share of the real 5-minute data's windows above 1 %).",
        "",
        "| Pairs (firing) | Record → last alert (median, max) | First alert | Quiet window decided "
        "| S3 requests / window (quiet, firing) | Glue runs / window | SNS publishes / window (firing) | Cost / month "
        f"| vs {rows[0]['pairs']} pair{'' if rows[0]['pairs'] == 1 else 's'} |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        latency = row["latency"]
        quiet, firing = _requests(latency, "quiet_window"), _requests(latency, "request_window")
        glue_runs = latency["quiet_window"]["requests"]["by_service"].get("glue", {}).get("StartJobRun", 0)
        publishes = latency["request_window"]["requests"]["by_service"].get("sns", {}).get("Publish", 0)
        first = statistics.median(w["first_alert_seconds"] for w in latency["windows"])
        total = row["cost"]["python_shell_total"]
        decided = latency["quiet_window"]["timeline"]["analyse_pairs end"]
        executor = "" if row.get("executor", "LocalExecutor") == "LocalExecutor" else ", Celery ×2"
        lines.append(
            f"| {row['pairs']} ({row.get('firing', row['pairs'])}{executor}) | {latency['median_seconds']:.1f} s, "
            f"{latency['max_seconds']:.1f} s | {first:.1f} s | {decided:.1f} s | {quiet.get('s3', 0):,}, "
            f"{firing.get('s3', 0):,} | {glue_runs} | {publishes} | ${total:,.2f} | {total / base:.2f}× |"
        )
    lines += ["", "Monthly cost by item (Python shell Glue job, 8,640 runs):", ""]
    items = [name for name, _, _ in rows[0]["cost"]["python_shell"]]
    lines.append("| Item | " + " | ".join(f"{row['pairs']} pairs" for row in rows) + " |")
    lines.append("|---|" + "---:|" * len(rows))
    for index, name in enumerate(items):
        cells = [f"${row['cost']['python_shell'][index][2]:,.2f}" for row in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = [f"**${row['cost']['python_shell_total']:,.2f}**" for row in rows]
    lines.append("| **Total** | " + " | ".join(totals) + " |")
    for kind, title in (("quiet_window", "no pair fires"), ("request_window", "the pairs in brackets fire")):
        lines += ["", f"S3 requests of one window where {title}, by operation:", ""]
        s3 = [row["latency"][kind]["requests"]["by_service"].get("s3", {}) for row in rows]
        lines.append("| Operation | " + " | ".join(f"{row['pairs']} pairs" for row in rows) + " |")
        lines.append("|---|" + "---:|" * len(rows))
        for operation in sorted({op for counts in s3 for op in counts}):
            lines.append(f"| {operation} | " + " | ".join(f"{counts.get(operation, 0):,}" for counts in s3) + " |")
    peaks = [f"{row['pairs']} pairs{'' if row.get('executor', 'LocalExecutor') == 'LocalExecutor' else ' (Celery)'}: "
             f"{row['analysis_peak_mib']} MiB" for row in rows if row.get("analysis_peak_mib")]  # fmt: skip
    if peaks:
        lines += ["", "Peak memory of the live analysis task's process (`analyse_pairs`, its log): " + "; ".join(peaks)]
    for row in rows:
        if "bulk" in row:
            bulk = row["bulk"]
            lines += [
                "",
                f"Bulk backfill, {bulk['days']} days × {row['pairs']} pairs ({bulk['windows']:,} windows, "
                f"{bulk['windows'] * row['pairs']:,} records): **{bulk['seconds']:.1f} s** end to end "
                f"({bulk['state']}; Glue task {bulk['glue_task_seconds'] or 0:.1f} s, job run "
                f"{bulk['glue_run']['seconds'] or 0:.1f} s; analysis task {bulk['analysis_task_seconds'] or 0:.1f} s); "
                f"{bulk['parquet_objects']} monthly Parquet objects (one per pair and month).",
            ]
        if row.get("restarts"):
            lines += ["", f"{row['pairs']} pairs: components restarted during the run: {row['restarts']}"]
    return "\n".join(lines) + "\n"


def _machine() -> str:
    m = machine.describe()
    return f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}, {m['os']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 10 pairs, 1 window each, bulk 1 day")
    parser.add_argument("--output", type=Path, help="report path (default bench/results/pairs.md or pairs-quick.md)")
    parser.add_argument("--keep-state", action="store_true", help="keep each stack's state folder afterwards")
    parser.add_argument("--counts", type=int, nargs="+", help=f"pair counts to measure (default {COUNTS})")
    parser.add_argument("--firing", type=int, help="pairs that move in a firing window (default: every pair)")
    parser.add_argument(
        "--executors", nargs="+", choices=("LocalExecutor", "CeleryExecutor"), default=["LocalExecutor"],
        help="each count on a stack of each executor (CeleryExecutor: 2 workers), side by side",
    )  # fmt: skip
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    counts = tuple(args.counts) if args.counts else None
    results = run(args.quick, args.keep_state, counts, args.firing, tuple(args.executors))
    text = (
        f"### Pairs benchmark {started:%Y-%m-%d %H:%M} UTC ({'quick' if args.quick else 'full'})\n\n"
        f"Command: `{' '.join(['python -m bench.pairs', *(argv or sys.argv[1:])])}`.  \n"
        f"Machine: {_machine()}.\n" + report(results)
    )
    print(text)
    name = "pairs-" + "-".join(map(str, args.counts)) if args.counts else "pairs"
    output = args.output or RESULTS / f"{name}{'-quick' if args.quick else ''}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    output.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    log(f"report written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

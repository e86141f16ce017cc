"""The markdown report of one benchmark run (printed, and written to bench/results/)."""

from __future__ import annotations

import statistics


def _s(seconds: float | None, digits: int = 1) -> str:
    return "n/a" if seconds is None else f"{seconds:,.{digits}f} s"


def _usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:,.4f}"


def _per_window(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms/window" if seconds < 1 else f"{seconds:,.2f} s/window"


def _phases(seconds: dict | None) -> str:
    """`` (read CSVs 3.1 s, ...)`` from the analysis task's own phase timings."""
    if not seconds:
        return ""
    names = {"read_csv": "read CSVs", "analyse": "decide", "write_ledger": "ledger", "write_parquet": "Parquet"}
    return " (" + ", ".join(f"{names[k]} {_s(v)}" for k, v in seconds.items() if k in names) + ")"


def _restarts(r: dict) -> list[str]:
    if not r.get("restarts"):
        return []
    what = "; ".join(f"{x['component']} at {x['at']}" for x in r["restarts"])
    return [
        "",
        f"Airflow components that died during the run and were restarted: {what}. The native backfill was "
        f"measured again on another day (attempt {r['native'].get('attempt', 1)} is reported).",
    ]


def _duration(text: str | None) -> str:
    """``0:00:00.604693`` (as ``airflow dags report`` prints it) as seconds."""
    if not text:
        return "n/a"
    hours, minutes, seconds = text.split(":")
    return _s(int(hours) * 3600 + int(minutes) * 60 + float(seconds), 2)


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"### Benchmark run {r['started']} ({'quick' if r['quick'] else 'full'})",
        "",
        f"Command: `{r['command']}` ({r['wall_seconds'] / 60:.1f} min wall time).  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Python {m['python']}, {m['os']} "
        f"(kernel {m['kernel']}).  ",
        f"Load average (1/5/15 min) at start {r['load_start']}, at end {r['load_end']}: other work shared the "
        "machine, so every time below is an upper bound for it.  ",
        "Everything runs locally: moto stand-in for AWS (one process, a thread per connection, bound by one GIL), "
        "Airflow 3.3 scheduler, dag-processor, triggerer and api-server as separate processes, embedded PostgreSQL, "
        "LocalExecutor (parallelism 8).",
        *_restarts(r),
        "",
        "| Figure | Result | How it was measured |",
        "|---|---|---|",
    ]
    for bulk in r["bulk"]:
        s = bulk["summary"] or {}
        lines.append(
            f"| Bulk backfill, {bulk['days']:g} day{'s' if bulk['days'] != 1 else ''} ({bulk['windows']:,} windows) "
            f"| **{_s(bulk['seconds'])}** end to end, {_per_window(bulk['seconds_per_window'])} "
            f"({bulk['state']}) "
            f"| `price_history_backfill` triggered with `airflow dags trigger`, run by the scheduler; dag_run "
            f"queued → end. Glue task {_s(bulk['glue_task_seconds'])} (job run {_s(bulk['glue_run']['seconds'])}), "
            f"analysis task {_s(bulk['analysis_task_seconds'])}{_phases(s.get('seconds'))}; "
            f"{s.get('windows_seen', 0):,} windows seen, "
            f"{s.get('breaches', 0):,} breaches; synthetic records of `local/feed.py` in rotating formats |"
        )
    rate = r["standin_rate"]
    lines.append(
        f"| Stand-in S3 request rate (reference) | PUT {rate['put_per_second']:,.0f}/s, GET "
        f"{rate['get_per_second']:,.0f}/s | 2,000 small objects, 10 threads of one client process; the stand-in is "
        f"one Python process, so a bulk run's 3 S3 requests per window at this rate would take "
        f"≈ {r['standin_floor_seconds']:.0f} s for the {max(b['windows'] for b in r['bulk']):,}-window run "
        "(the Glue job spreads a long range over one process per CPU to beat it) |"
    )
    native = r["native"]
    lines.append(
        f"| Native backfill, {native['runs']} windows | {_s(native['seconds'])}, "
        f"**{_per_window(native['seconds_per_window'])}** ({native['states']}) "
        f"| `airflow backfill create` of `price_notification` (max-active-runs {native['max_active_runs']}), "
        "scheduler running; first run started → last run ended |"
    )
    for bulk in r["bulk"]:
        ratio = native["seconds_per_window"] / bulk["seconds_per_window"]
        lines.append(
            f"| Per-window speed-up, bulk {bulk['days']:g} d vs native | **{ratio:,.0f}×** "
            f"| native s/window ÷ bulk s/window, same stack, same run |"
        )
    targets = r["targets"]
    lines.append(f"| Target: 30 days in under 120 s | {targets['thirty_days']} | {targets['thirty_days_note']} |")
    lines.append(f"| Target: ≥ 100× faster per window than native | {targets['speedup']} | {targets['speedup_note']} |")
    latency = r["latency"]
    lines.append(
        f"| Live latency, record lands → alert in the subscriber SQS queue | **median {_s(latency['median_seconds'])}, "
        f"max {_s(latency['max_seconds'])}** (min {_s(latency['min_seconds'])}) over {len(latency['windows'])} windows "
        "| scheduler running; `price_notification` runs triggered through the REST API for past windows with "
        "`notify_on_backfill` (scheduled runs would need the wall clock to reach each window; the tasks are the "
        "same); an hour of previous prices in place; the record (+2 %) is written while the run's deferred sensor "
        f"waits, at evenly spread points of its {latency['sensor_poke_seconds']} s poke cycle (Glue task polling "
        f"every {latency.get('glue_poll_seconds', '?')} s); timed to the SQS SentTimestamp of the alert; no Glue "
        "start-up (the stand-in starts a job run at once) |"
    )
    if started := r.get("latency_glue_startup"):
        lines.append(
            f"| Live latency with Glue start-up as on AWS (modelled: `glue_startup_ms={started['glue_startup_ms']}`) "
            f"| **median {_s(started['median_seconds'])}, max {_s(started['max_seconds'])}** "
            f"(min {_s(started['min_seconds'])}) over {len(started['windows'])} windows "
            "| the same, with the stand-in holding each Glue job run RUNNING that long before its script starts "
            "(a model of Glue Python shell start-up, not a measurement of AWS) |"
        )
    parse = r["parse"]
    processor = ", ".join(f"`{d}` {_s(v, 2)}" for d, v in sorted(parse["dag_processor"].items()))
    report = ", ".join(
        f"`{row.get('file', '?').rsplit('/', 1)[-1]}` {_duration(row.get('duration'))}" for row in parse["dags_report"]
    )
    lines.append(
        f"| DAG file parse time | {processor} | dag-processor's `last_parse_duration` (metadata DB, each file in "
        f"its own process); `airflow dags report` (one process, files in turn, the first pays the shared "
        f"imports): {report or 'n/a'} |"
    )
    t = r["throughput"]
    by_format = ", ".join(f"{fmt} {n:,}/s" for fmt, n in t["by_format"].items())
    lines.append(
        f"| Glue script normalization, in process | **{t['records_per_second']:,.0f} records/s** ({by_format}) "
        f"| `decode_text` + `parse_object` + `normalize`, best of 3 over {t['records']:,} synthetic records in "
        "rotating formats, one thread |"
    )
    e2e = r["glue_e2e"]
    lines.append(
        f"| Glue script, end-to-end S3 range run | **{e2e['records_per_second']:,.0f} records/s** "
        f"({e2e['rows']:,} rows in {_s(e2e['seconds'])}) "
        "| the bulk run's one job run on the stand-in: day-partition LISTs, ranged GETs, normalize, PUT of each "
        "canonical CSV (16 threads); rows ÷ job run time |"
    )
    cost = r["cost"]
    lines.append(
        f"| AWS cost per month, this pipeline (Glue Python shell) | **{_usd(cost['python_shell_total'])}** "
        f"| {cost['runs_per_month']:,} runs; see the cost table |"
    )
    lines.append(
        f"| AWS cost per month, same with a Glue Spark job | **{_usd(cost['spark_total'])}** "
        "| 2 DPU, 1-minute minimum per run |"
    )
    lines += ["", "#### AWS cost per month at a 5-minute cadence", ""]
    lines += [
        f"Glue job as the DAG creates it on the stand-in: `{r['glue_job']['Command']['Name']}`, MaxCapacity "
        f"{r['glue_job']['MaxCapacity']} DPU, Timeout {r['glue_job'].get('Timeout')} min. A run is billed "
        f"{cost['glue_billed_seconds']:.0f} s (the 1-minute minimum; the stand-in's run took "
        f"{_s(r['latency']['request_window']['glue_run']['seconds'])}, Glue on AWS adds start-up); each further "
        f"minute per run would add {_usd(cost['per_extra_minute'])}/month. Prices: `bench/aws_prices.json` "
        f"({r['prices']['region']}, recorded {r['prices']['recorded']}; {r['prices']['note']})",
        "",
        "| Item | Quantity / month | Python shell | Spark 2 DPU |",
        "|---|---:|---:|---:|",
    ]
    for shell, spark in zip(cost["python_shell"], cost["spark"], strict=True):
        name = shell[0] if shell[0] == spark[0] else "Glue job runs (0.0625 DPU shell / 2 DPU Spark, 1-min minimum)"
        lines.append(f"| {name} | {shell[1]:,} | {_usd(shell[2])} | {_usd(spark[2])} |")
    lines.append(f"| **Total** | | **{_usd(cost['python_shell_total'])}** | **{_usd(cost['spark_total'])}** |")
    lines += [
        "",
        f"Not included: Airflow itself (on MWAA an mw1.small environment is about {_usd(cost['mwaa_month'])}/month), "
        "Athena queries, data transfer, free tiers. Log volume adds an assumed "
        f"{r['prices_assumed_log_bytes']:,} bytes per run of Glue's own lines to the script's measured output.",
        "",
        "#### AWS requests of one live window (measured)",
        "",
        "Recorded by the stand-in (moto's request recorder) for one `price_notification` run that published an "
        "alert, from trigger to end (task tries: "
        + ", ".join(f"{t} {n}" for t, n in sorted(r["latency"]["request_window"].get("tries", {}).items()))
        + "); the producer's PUT and other windows' sensor polls are left out. These "
        "counts drive the S3, SNS and CloudWatch lines above (SNS publishes scale with the share of windows that "
        f"alert: {r['publish_share']:.1%} of windows in the bulk run's synthetic month).",
        "",
        "| Service | Operation | Requests |",
        "|---|---|---:|",
    ]
    for service, operations in r["latency"]["request_window"]["requests"]["by_service"].items():
        for operation, count in operations.items():
            lines.append(f"| {service} | {operation} | {count} |")
    lines += [
        "",
        "#### Live latency per window",
        "",
        "Seconds from the record landing to each step (task instance start/end in the metadata DB, the Glue job "
        "run's StartedOn/CompletedOn, the alert's SQS SentTimestamp).",
        "",
        latency_steps(latency),
    ]
    if started:
        lines += ["", f"With `glue_startup_ms={started['glue_startup_ms']}`:", "", latency_steps(started)]
    return "\n".join(lines) + "\n"


def latency_steps(latency: dict) -> str:
    """Per window: seconds from the record landing to each step of its run, then median/min/max."""
    from bench.pipeline import TIMELINE

    labels = [label for label, _, _ in TIMELINE] + ["alert in SQS"]
    lines = [
        "| Window | Landed after deferral | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * (len(labels) + 1),
    ]
    for w in latency["windows"]:
        steps = w.get("timeline", {})
        cells = ["n/a" if steps.get(k) is None else f"{steps[k]:.1f}" for k in labels]
        lines.append(f"| {w['window']} | {w['landed_after_deferral_seconds']:.1f} | " + " | ".join(cells) + " |")
    medians = []
    for label in labels:
        values = [w["timeline"][label] for w in latency["windows"] if w.get("timeline", {}).get(label) is not None]
        medians.append(f"{statistics.median(values):.1f}" if values else "n/a")
    lines.append("| **median** | | " + " | ".join(medians) + " |")
    lines += [
        "",
        f"Median {_s(latency['median_seconds'])}, min {_s(latency['min_seconds'])}, max "
        f"{_s(latency['max_seconds'])} over {len(latency['windows'])} windows.",
    ]
    return "\n".join(lines)

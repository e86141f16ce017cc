"""``make backfill FROM=.. TO=..``: native Airflow backfill of price_notification over a range.

Wraps ``airflow backfill create`` with the local stack's environment. FROM and TO are window starts
(logical dates, UTC, inclusive), e.g. ``FROM=2026-11-25T10:00 TO=2026-11-25T12:00``. The scheduler of
``make run`` (another terminal) executes the runs. Backfill runs never notify subscribers unless
``NOTIFY=1`` (the ``notify_on_backfill`` param); windows already notified are never notified again.
"""

from __future__ import annotations

import argparse
import json
import sys

from local.stack import Stack

DAG_ID = "price_notification"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="start", required=True, help="first window start, UTC")
    parser.add_argument("--to", dest="end", required=True, help="last window start, UTC (inclusive)")
    parser.add_argument("--notify", action="store_true", help="notify subscribers for breaches too")
    parser.add_argument("--max-active-runs", default="8")
    args = parser.parse_args(argv)
    if not args.start or not args.end:
        parser.error("give both FROM and TO, e.g. make backfill FROM=2026-11-25T10:00 TO=2026-11-25T12:00")
    stack = Stack()
    alive = stack.airflow("jobs", "check", "--job-type", "SchedulerJob", "--local", check=False)
    if alive.returncode != 0:
        print("No scheduler is running for .local/: start `make run` in another terminal first.", file=sys.stderr)
        return 2
    done = stack.airflow(
        "backfill",
        "create",
        "--dag-id",
        DAG_ID,
        "--from-date",
        args.start,
        "--to-date",
        args.end,
        "--reprocess-behavior",
        "completed",
        "--max-active-runs",
        args.max_active_runs,
        "--dag-run-conf",
        json.dumps({"notify_on_backfill": args.notify}),
        check=False,
    )
    print(done.stdout[-3000:], done.stderr[-3000:] if done.returncode else "", sep="\n")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())

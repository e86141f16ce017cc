"""``make backfill FROM=.. TO=..``: a native Airflow backfill of price_notification over a range,
created the way the UI's backfill dialog creates it (REST API, logged in as ``make run``'s admin).

FROM and TO are window starts (logical dates, UTC, inclusive), e.g. ``FROM=2026-11-25T10:00
TO=2026-11-25T12:00``. The scheduler of ``make run`` (another terminal; same AIRFLOW_PORT) runs the
windows; this prints the backfill id and its page in the UI, then progress until the backfill ends.
Exit code 0 when every window succeeded, 1 when one failed or Airflow refused the backfill (its
reason is printed), 2 when no ``make run`` answers. Ctrl-C stops the waiting, not the backfill.

Airflow runs one backfill per DAG at a time: when one is running, this says so and waits for it
before creating its own. Backfill runs never notify subscribers unless ``NOTIFY=1`` (the
``notify_on_backfill`` param); windows already notified are never notified again.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from local.api import Api, ApiError, Progress, backfill_when_free, progress, wait_for_backfill
from local.stack import ROOT, Stack


def window_start(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="start", required=True, help="first window start, UTC")
    parser.add_argument("--to", dest="end", required=True, help="last window start, UTC (inclusive)")
    parser.add_argument("--notify", action="store_true", help="notify subscribers for breaches too")
    parser.add_argument("--max-active-runs", type=int, default=8)
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".local", help="the make run state folder")
    args = parser.parse_args(argv)
    if not args.start or not args.end:
        parser.error("give both FROM and TO, e.g. make backfill FROM=2026-11-25T10:00 TO=2026-11-25T12:00")
    first, last = window_start(args.start), window_start(args.end)
    stack = Stack(state_dir=args.state_dir, api_port=int(os.environ.get("AIRFLOW_PORT", "8080")))
    if not stack.passwords_file.exists():
        print(f"No `make run` login in {stack.passwords_file}: start `make run` in another terminal first.")
        return 2
    try:
        api = Api(stack)
    except (OSError, ApiError) as error:
        print(f"No `make run` answers on {stack.ui_url} ({error}): start it in another terminal first.")
        return 2
    try:
        backfill = backfill_when_free(
            stack, api, first, last, args.notify, args.max_active_runs, report=lambda line: print(line, flush=True)
        )
    except ApiError as error:
        print(f"Airflow refused the backfill: {error.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopped waiting; nothing was created.")
        return 130
    print(f"Backfill {backfill['id']} created: {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC")
    print(f"In the UI: {api.backfill_ui_url()}", flush=True)
    try:
        final = wait_for_backfill(stack, backfill, report=lambda line: print("  " + line, flush=True))
    except KeyboardInterrupt:
        print(f"\nStopped waiting; the backfill goes on ({progress(stack, backfill).line()}).")
        return 130
    return report(final)


def report(final: Progress) -> int:
    if final.total == 0:
        print(f"Backfill {final.backfill_id} ran no window (is the range in the DAG's schedule?)", file=sys.stderr)
        return 1
    if final.failed or final.done != final.total:
        print(f"Backfill {final.backfill_id}: {final.total - final.done} of {final.total} windows did not succeed",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"Backfill {final.backfill_id}: {final.done} of {final.total} windows succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main())

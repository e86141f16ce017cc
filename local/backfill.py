"""``make backfill FROM=.. TO=..``: a native Airflow backfill of price_notification over a range,
created the way the UI's backfill dialog creates it (REST API, logged in as ``make run``'s admin).

FROM and TO are window starts (logical dates, UTC, inclusive): ``FROM=2026-11-25T10:00
TO=2026-11-25T12:00``, or relative to now, ``FROM=-45m TO=-15m`` (``m``, ``h`` or ``d``: the window that was
starting then). The scheduler of ``make run`` (another terminal; same AIRFLOW_PORT) runs the windows; this
prints the backfill id and its page in the UI, then the windows done / failed / no record / waiting (for
a record, for an earlier window) / in all whenever a number changes and at least every 30 s, and at the
end each window that failed or had no record with the reason its task gave.

A backfill run looks for its window's record once: a window without one ends at once as *no record*
(its run is skipped, not failed), and nothing is paged to ops: this summary is the report. Exit code 0
when every window succeeded with a record, 1 when one failed or had none or Airflow refused the
backfill (its reason is printed), 2 when no ``make run`` answers. Ctrl-C stops the waiting, not the
backfill.

With ``FETCH=1`` (``make run FEED=exchange`` running), the range's candles are first fetched from the
exchange feed's exchange for every pair and window that has no record (in pages, written once), so a
pair added to the rules file gets its past in the same command; a pair whose candles cannot be had stops
it with that pair's one-line reason, before any backfill is created.

Airflow runs one backfill per DAG at a time: when one is running, this says so and waits for it
before creating its own. Backfill runs never notify subscribers unless ``NOTIFY=1`` (the
``notify_on_backfill`` param); windows already notified are never notified again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from include.price_pipeline import layout
from local.api import Api, ApiError, Progress, backfill_when_free, progress, unfinished_windows, wait_for_backfill
from local.stack import ROOT, Stack

RELATIVE = re.compile(r"-(?=\d)(?:(?P<days>\d+)d)?(?:(?P<hours>\d+)h)?(?:(?P<minutes>\d+)m)?")


def window_start(text: str, now: datetime | None = None) -> datetime:
    """A window start given as ISO time (UTC unless it says otherwise) or as a time before ``now`` such as
    ``-45m``, ``-2h``, ``-2h15m`` or ``-1d``: the window that was starting then. ValueError otherwise."""
    relative = RELATIVE.fullmatch(text.strip())
    if relative:
        ago = timedelta(**{unit: int(n) for unit, n in relative.groupdict().items() if n})
        return layout.slot_start((now or datetime.now(UTC)) - ago)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="start", required=True, help="first window start, UTC, or -<n>m|h|d before now")
    parser.add_argument("--to", dest="end", required=True, help="last window start (inclusive), as --from")
    parser.add_argument("--notify", action="store_true", help="notify subscribers for breaches too")
    parser.add_argument("--fetch", action="store_true", help="first fetch missing candles from the exchange feed")
    parser.add_argument("--max-active-runs", type=int, default=8)
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".local", help="the make run state folder")
    args = parser.parse_args(argv)
    if not args.start or not args.end:
        parser.error("give both FROM and TO, e.g. make backfill FROM=-45m TO=-15m or FROM=2026-11-25T10:00 TO=..")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    now = datetime.now(UTC)
    try:
        first, last = window_start(args.start, now), window_start(args.end, now)
    except ValueError as error:
        print(f"FROM and TO are UTC times (2026-11-25T10:00) or times before now (-45m, -2h15m, -1d): {error}")
        return 2
    stack = Stack(state_dir=args.state_dir, api_port=int(os.environ.get("AIRFLOW_PORT", "8080")))
    if not stack.passwords_file.exists():
        print(f"No `make run` login in {stack.passwords_file}: start `make run` in another terminal first.")
        return 2
    try:
        api = Api(stack)
    except (OSError, ApiError) as error:
        print(f"No `make run` answers on {stack.ui_url} ({error}): start it in another terminal first.")
        return 2
    if args.fetch and not fetch(stack, first, last + layout.SLOT):
        return 1
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
    return report(final, unfinished_windows(api, backfill))


def fetch(stack: Stack, start: datetime, end: datetime) -> bool:
    """The range's missing candles from ``make run FEED=exchange``'s exchange; False (said why) if not had."""
    from local.run import FEED_SETTINGS, fetch_history

    settings_file = stack.state_dir / FEED_SETTINGS
    if not settings_file.exists():
        print(f"FETCH=1 takes candles from `make run FEED=exchange`'s exchange: {settings_file} is not there.")
        return False
    print(f"Fetching the candles of {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC that have no record ...")
    try:
        fetched = fetch_history(stack, start, end, json.loads(settings_file.read_text()))
    except RuntimeError as problem:
        print(f"Feed problem, nothing backfilled: {problem}", file=sys.stderr)
        return False
    for pair, counts in fetched.items():
        print(f"  {pair}: {counts['written']} written, {counts['present']} had a record, {counts['not_served']} "
              f"not served by the exchange, {counts['refused']} refused", flush=True)  # fmt: skip
        for line in counts["refusals"]:
            print(f"    refused: {line}", flush=True)
    return True


def report(final: Progress, unfinished: list[tuple[datetime, str, str]]) -> int:
    """The backfill's outcome: one line, then each window that failed or had no record with its reason."""
    if final.total == 0:
        print(f"Backfill {final.backfill_id} ran no window (is the range in the DAG's schedule?)", file=sys.stderr)
        return 1
    if final.done != final.total:
        print(f"Backfill {final.backfill_id}: {final.total - final.done} of {final.total} windows did not succeed "
              f"({final.failed} failed, {final.no_record} no record):", file=sys.stderr)  # fmt: skip
        for window, what, reason in unfinished:
            print(f"  {window:%Y-%m-%d %H:%M} UTC  {what}: {reason}", file=sys.stderr)
        return 1
    print(f"Backfill {final.backfill_id}: {final.done} of {final.total} windows succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main())

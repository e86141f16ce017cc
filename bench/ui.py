"""The Price alerts page's render time: request to drawn chart, in headless Chromium on the bench stack.

Run after the bulk backfill of the long range, so the page reads that range as a user would see it
(monthly Parquet and the ledger entries of its breaches). The time is the browser's own: from the start
of the page's navigation to the frame after the charts, counts and table are drawn (the page marks it
``price-alerts-drawn``), so it holds the HTML, the script, the data request with its S3 reads, and the
drawing. Over a long range the chart is drawn from the monthly Parquet first; the ledger entries of
the windows that need one (breaches: sent or not, message id) arrive in a second request, measured
to the frame after they are drawn too (``price-alerts-complete``). The first load is reported apart.
"""

from __future__ import annotations

import shutil
import statistics
from datetime import datetime

from local.stack import Stack, log_in

REPEATS = 5
#: How long a load may take to read the ledger entries of its pending windows (a year: thousands of GETs).
COMPLETE_TIMEOUT_MS = 900_000
MARKS = ("price-alerts-drawn", "price-alerts-complete")


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def render_times(stack: Stack, start: datetime, end: datetime, repeats: int = REPEATS) -> dict:
    """Milliseconds from request to drawn chart for ``[start, end)``, the first load and ``repeats`` more."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        return {"error": "Debian's chromium is not installed (make browser)"}
    url = f"{stack.ui_url}/price-alerts/?start={iso(start)}&end={iso(end)}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            log_in(page, stack, url)
            loads = []
            for attempt in range(repeats + 1):
                if attempt:
                    page.goto(url)
                # The chart first (the target), then the ledger entries of the pending windows, which over a
                # long range are thousands of S3 GETs: waited for longer, and reported apart.
                page.wait_for_selector("body[data-state=drawn], body[data-state=complete]", timeout=120_000)
                page.wait_for_selector("body[data-state=complete]", timeout=COMPLETE_TIMEOUT_MS)
                loads.append(_timings(page))
        finally:
            browser.close()
    first, rest = loads[0], loads[1:]
    return {
        "url": url.replace(stack.ui_url, ""),
        "windows": first["windows"],
        "mode": first["mode"],
        "first_ms": first["drawn_ms"],
        "median_ms": statistics.median(load["drawn_ms"] for load in rest),
        "max_ms": max(load["drawn_ms"] for load in rest),
        "median_data_ms": statistics.median(load["data_ms"] for load in rest),
        "first_complete_ms": first["complete_ms"],
        "median_complete_ms": statistics.median(load["complete_ms"] for load in rest),
        "max_complete_ms": max(load["complete_ms"] for load in rest),
        "pending": first["pending"],
        "repeats": repeats,
    }


def _timings(page) -> dict:
    return page.evaluate(
        """([drawnMark, completeMark]) => {
            const drawn = performance.getEntriesByName(drawnMark)[0].startTime;
            const complete = performance.getEntriesByName(completeMark)[0].startTime;
            const data = performance.getEntriesByType("resource").find((e) => e.name.includes("/api/history"));
            const ledger = performance.getEntriesByType("resource").find((e) => e.name.includes("/api/ledger"));
            const status = document.getElementById("status").textContent;
            return {
                drawn_ms: drawn,
                complete_ms: complete,
                data_ms: data ? data.duration : null,
                ledger_ms: ledger ? ledger.duration : null,
                windows: Number((status.match(/: (\\d+) windows/) || [0, 0])[1]),
                mode: status.includes("Parquet") ? "parquet" : "ledger",
                pending: Number((status.match(/and (\\d+) ledger entries/) || [0, 0])[1]),
            };
        }""",
        list(MARKS),
    )


def report(ui: dict | None) -> str:
    """The bench report's section (appended to the table bench/report.py renders)."""
    if not ui:
        return ""
    if "error" in ui:
        return f"\n## Price alerts page\n\nNot measured: {ui['error']}\n"
    return (
        "\n## Price alerts page\n\n"
        "| Figure | Value | How |\n|---|---|---|\n"
        f"| {ui['windows']:,} windows, request to drawn chart | **median {ui['median_ms']:,.0f} ms** "
        f"(max {ui['max_ms']:,.0f} ms, first load {ui['first_ms']:,.0f} ms); target under 2,000 ms | "
        f"headless Chromium on the bench stack, `{ui['url']}` ({ui['mode']} path), {ui['repeats']} loads after "
        f"the first: charts, counts and table drawn from the prices; the data request alone: median "
        f"{ui['median_data_ms']:,.0f} ms |\n"
        f"| Same, until the ledger entries of the {ui['pending']:,} breach and unpriced windows are in | "
        f"median {ui['median_complete_ms']:,.0f} ms (max {ui['max_complete_ms']:,.0f} ms, first load "
        f"{ui['first_complete_ms']:,.0f} ms) | one S3 GET per such window, after the chart is drawn |\n"
    )


def main() -> int:
    """``python -m bench.ui [DAYS]``: this row alone, on its own stack (the feed's synthetic month through
    the bulk history DAG, then the page), without the half hour of the full ``make bench``."""
    import json
    import sys
    import tempfile
    import time
    from datetime import UTC, timedelta
    from pathlib import Path

    from bench.pipeline import Bench
    from include.price_pipeline import layout

    days = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    start = datetime(2025, 4, 1, tzinfo=UTC)
    end = start + timedelta(days=days)
    state_dir = Path(tempfile.mkdtemp(prefix="price-bench-ui-"))
    bench = Bench(state_dir)
    try:
        bench.start()
        began = time.monotonic()
        bench.write_history(layout.slots_between(start, end))
        result = bench.bulk_backfill(start, end)
        took = time.monotonic() - began
        print(f"bulk backfill {result['state']} in {result['seconds']:.1f} s ({took:.0f} s with the writes)")
        ui = render_times(bench.stack, start, end)
    finally:
        bench.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
    print(json.dumps(ui, indent=1))
    print(report(ui))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

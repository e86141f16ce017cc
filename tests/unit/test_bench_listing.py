"""``make bench``'s listing section runs and reports both listings of the same keys (the figures
themselves are the benchmark's, never asserted)."""

from __future__ import annotations

from bench import listing


def test_a_day_and_a_window_are_listed_alike_with_and_without_the_index_and_reported():
    results = listing.measure([2 * listing.SLOTS_PER_DAY], repeat=1)

    assert [(row["prefix"], row["listed"]) for row in results["rows"]] == [("one day", 288), ("one window", 1)]
    assert all(row["moto_ms"] > 0 and row["indexed_ms"] > 0 for row in results["rows"])
    text = listing.report(results)
    assert "| 576 | one day (288 keys) |" in text
    assert "| 576 | one window (1 key) |" in text

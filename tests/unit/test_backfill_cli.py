"""``make backfill``'s own parts: relative ranges, the progress line and the reasons read from task logs."""

from __future__ import annotations

import pytest

from local.api import Progress, log_reason
from local.backfill import window_start
from tests.conftest import utc

NOW = utc(2026, 12, 3, 14, 7, 31)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-45m", utc(2026, 12, 3, 13, 20)),  # the window that was starting 45 minutes ago
        ("-2h", utc(2026, 12, 3, 12, 5)),
        ("-2h15m", utc(2026, 12, 3, 11, 50)),
        ("-1d", utc(2026, 12, 2, 14, 5)),
        ("2026-11-25T10:00", utc(2026, 11, 25, 10, 0)),
        ("2026-11-25T10:00Z", utc(2026, 11, 25, 10, 0)),
    ],
)
def test_a_range_is_given_in_utc_or_relative_to_now(text, expected):
    assert window_start(text, NOW) == expected


@pytest.mark.parametrize("text", ["-", "-2x", "-h", "yesterday", "-2m15h"])
def test_a_range_that_is_neither_is_refused(text):
    with pytest.raises(ValueError, match="isoformat"):
        window_start(text, NOW)


def test_the_progress_line_counts_each_kind_of_window():
    progress = Progress(7, done=4, failed=1, no_record=2, waiting_for_record=0, waiting_for_earlier=3, total=12,
                        completed=False)  # fmt: skip

    assert progress.line() == (
        "backfill 7: 4 done, 1 failed, 2 no record, waiting 0 for a record and 3 for an earlier window, 12 windows"
    )


def test_the_reason_is_the_skip_reason_or_the_raised_error_of_the_tasks_log():
    skipped = [{"event": "Poking for key"}, {"event": "Skipping task.", "reason": "no record for window X:\n a"}]
    failed = [
        {"event": "Task failed with exception", "level": "error",
         "error_detail": [{"exc_type": "AirflowFailException", "exc_value": "record for window X quarantined: bad"},
                          {"exc_type": "KeyError", "exc_value": "'the cause'", "is_cause": True}]},
    ]  # fmt: skip

    assert log_reason(skipped) == "no record for window X: a"
    assert log_reason(failed) == "AirflowFailException: record for window X quarantined: bad"
    assert log_reason(["plain text line"]) is None


def test_make_backfill_hands_a_relative_range_to_the_command_as_values_not_options():
    """``FROM=-45m`` starts with a dash: passed as ``--from -45m`` argparse took it for an option."""
    import shlex
    import subprocess

    from local.backfill import parse_args
    from tests.conftest import ROOT

    printed = subprocess.run(
        ["make", "-s", "-n", "backfill", "FROM=-45m", "TO=-15m"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    [command] = [shlex.split(line) for line in printed.splitlines() if "local.backfill" in line]
    args = parse_args(command[command.index("local.backfill") + 1 :])

    assert (args.start, args.end) == ("-45m", "-15m")

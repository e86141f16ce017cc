"""Issue 38: an ops incident opens once, is counted by the next failing windows, reminded every
PRICE_OPS_REPEAT_MINUTES of windows and resolved once by the first healthy window after the last failing one
(``incidents.transition`` and its messages: pure, over window times)."""

from __future__ import annotations

from datetime import timedelta

from include.price_pipeline import incidents, layout
from tests.conftest import utc

W0 = utc(2026, 12, 7, 10, 0)
HOUR = timedelta(minutes=60)
FEED = "price_exchange_feed.fetch_exchange_candles"


def window(index: int):
    return W0 + layout.SLOT * index


def down(
    index: int, exchange: str = "binance", detail: str = "binance ETH/USDT: exchange down"
) -> incidents.Observation:
    failure = incidents.Failure(incidents.FEED_PROBLEM, exchange, FEED, detail)
    return incidents.Observation(window(index), failures=(failure,))


def up(index: int) -> incidents.Observation:
    return incidents.Observation(window(index), healthy_task=FEED)


def play(observations, repeat=HOUR, state=None):
    """Every message the observations page, in order, and the state they leave."""
    state, pages = state or incidents.empty(), []
    for seen in observations:
        state, events = incidents.transition(state, seen, repeat)
        pages += incidents.messages(events, seen)
    return state, pages


def subjects(pages) -> list[str]:
    return [subject for subject, _ in pages]


def test_thirteen_failing_windows_open_once_and_the_first_healthy_one_resolves_with_duration_and_count():
    state, pages = play([*(down(i) for i in range(13)), up(13), up(14)])

    assert subjects(pages) == [
        "[price pipeline] Feed problem: binance 2026-12-07 10:00 UTC",
        "[price pipeline] Still feed problem: binance",  # window 12: 60 min after the page
        "[price pipeline] Resolved, feed problem: binance after 1 h 5 min, 13 windows",
    ]
    assert pages[0][1].startswith("binance ETH/USDT: exchange down\n")
    assert "Incident opened (Feed problem)" in pages[0][1]
    assert "open since 2026-12-07 10:00 UTC, 13 windows failing, the last 2026-12-07 11:00 UTC" in pages[1][1]
    assert pages[2][1] == ("Feed problem, binance: resolved by window 2026-12-07 11:05 UTC, after 1 h 5 min, "
                           "13 windows (first 2026-12-07 10:00 UTC, last 2026-12-07 11:00 UTC)")  # fmt: skip
    assert state["open"] == {}
    [closed] = state["closed"]
    assert (closed["first"], closed["last"], closed["resolved"], closed["windows"]) == (
        "2026-12-07T10:00:00Z", "2026-12-07T11:00:00Z", "2026-12-07T11:05:00Z", 13)  # fmt: skip


def test_reminders_come_every_repeat_minutes_of_failing_windows_and_never_with_repeat_zero():
    _, pages = play([down(i) for i in range(25)], repeat=timedelta(minutes=30))
    assert (
        subjects(pages)
        == ["[price pipeline] Feed problem: binance 2026-12-07 10:00 UTC"]
        + ["[price pipeline] Still feed problem: binance"] * 4
    )  # windows 6, 12, 18, 24

    _, pages = play([down(i) for i in range(25)], repeat=timedelta(0))
    assert len(pages) == 1


def test_a_retried_or_re_run_window_is_counted_once_and_pages_nothing():
    state, pages = play([down(0), down(1), down(1), down(0), down(1)])

    assert len(pages) == 1
    assert state["open"]["Feed problem: binance"]["windows"] == 2


def test_a_healthy_window_before_the_last_failing_one_resolves_nothing():
    """Runs end out of order (16 at once): window 3 healthy after window 5 failed is no recovery."""
    state, pages = play([down(0), down(5), up(3)])

    assert len(pages) == 1
    assert "Feed problem: binance" in state["open"]


def test_a_healthy_window_with_nothing_open_changes_nothing():
    state, events = incidents.transition(incidents.empty(), up(0), HOUR)
    assert (state, events) == (incidents.empty(), [])


def test_a_failure_after_the_resolution_opens_a_new_incident():
    state, pages = play([down(0), up(1), down(2), up(3)])

    assert [subject.split(":")[0] for subject in subjects(pages)] == [
        "[price pipeline] Feed problem", "[price pipeline] Resolved, feed problem",
        "[price pipeline] Feed problem", "[price pipeline] Resolved, feed problem",
    ]  # fmt: skip
    assert len(state["closed"]) == 2


def test_each_subject_is_its_own_incident_healed_by_its_own_health():
    late = [
        incidents.Failure(incidents.PAIR_LATE, pair, "", f"- {pair}: no record") for pair in ("BTC/USDT", "SOL/USDT")
    ]
    first = incidents.Observation(window(0), failures=tuple(late), note="Run: http://x")
    only_btc = incidents.Observation(window(1), failures=(late[1],), healthy=frozenset({"Pair late: BTC/USDT"}))

    state, pages = play([first, only_btc])

    assert pages[0] == (
        "[price pipeline] Pair late: BTC/USDT, SOL/USDT 2026-12-07 10:00 UTC",
        "- BTC/USDT: no record\n- SOL/USDT: no record\n\nRun: http://x\n\n" + incidents._opened_footer("Pair late"),
    )
    assert pages[1][0] == "[price pipeline] Resolved, pair late: BTC/USDT after 5 min, 1 window"
    assert list(state["open"]) == ["Pair late: SOL/USDT"]


def test_a_thousand_subjects_make_one_message_with_a_subject_sns_accepts():
    failures = tuple(incidents.Failure(incidents.PAIR_LATE, f"P{n:04d}/USDT", "", f"- P{n:04d}/USDT: no record")
                     for n in range(1000))  # fmt: skip
    _, pages = play([incidents.Observation(window(0), failures=failures)])

    [(subject, text)] = pages
    assert subject == "[price pipeline] Pair late: P0000/USDT, P0001/USDT, P0002/USDT and 997 more 2026-12-07 10:00 UTC"
    assert text.count("\n- P") == 999


def test_closed_incidents_kept_are_the_newest_twenty():
    observations = [seen for i in range(0, 60, 2) for seen in (down(i, exchange=f"x{i}"), up(i + 1))]
    state, _ = play(observations)
    assert len(state["closed"]) == incidents.CLOSED_KEPT
    assert state["closed"][0]["subject"] == "x58"

"""Issue 38 on the stand-in's S3: the incident state is changed only by conditional writes, so runs failing
alike at once open one incident; a message decided is sent once, and one that could not go is sent by the
next observation once its sender's lease ran out (``incidents.observe``)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from include.price_pipeline import incidents, layout
from tests.conftest import reads_together, utc

pytestmark = pytest.mark.integration

W0 = utc(2026, 12, 7, 10, 0)
HOUR = timedelta(hours=1)
STALE = incidents.Failure(incidents.FEED_STALE, "wait_for_price_record", "price_notification.wait_for_price_record",
                          "Feed stale: no price record arrived")  # fmt: skip


def observe(aws, seen, send, now=0.0, sender=""):
    return incidents.observe(aws.s3, aws.config.bucket, aws.config.changes_prefix, seen, HOUR, send, now, sender)


def state(aws) -> dict:
    return incidents.read(aws.s3, aws.config.bucket, aws.config.changes_prefix)


@pytest.mark.parametrize("windows", [[W0, W0], [W0, W0 + layout.SLOT]], ids=["same window", "next window"])
def test_two_runs_failing_alike_at_once_open_one_incident(aws, monkeypatch, windows):
    """Both read the state before either writes (a barrier after each first read): both try to create it,
    one write wins, the other reads again and counts (or, for the same window, leaves it)."""
    reads_together(monkeypatch, timeout=10)
    sent, lock = [], threading.Lock()

    def send(subject, text):
        with lock:
            sent.append(subject)

    threads = [threading.Thread(target=observe, args=(aws, incidents.Observation(at, failures=(STALE,)), send))
               for at in windows]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sent == ["[price pipeline] Feed stale: wait_for_price_record 2026-12-07 10:00 UTC"] or sent == [
        "[price pipeline] Feed stale: wait_for_price_record 2026-12-07 10:05 UTC"
    ]
    [opened] = state(aws)["open"].values()
    assert opened["windows"] == len(set(windows))
    assert state(aws)["unsent"] == []


def down(subject, text):
    raise ConnectionError("ops topic unreachable")


@pytest.mark.parametrize("by", ["its retry", "another sender, after the lease"])
def test_a_message_that_could_not_go_is_sent_once_by_its_senders_retry_or_another_after_the_lease(aws, by):
    with pytest.raises(incidents.NotSent, match="1 of 1 ops messages not sent"):
        observe(aws, incidents.Observation(W0, failures=(STALE,)), down, now=1000.0, sender="run-1/report")
    [kept] = state(aws)["unsent"]
    assert kept["subject"].startswith("[price pipeline] Feed stale")
    sent = []
    counted = incidents.Observation(W0 + layout.SLOT, failures=(STALE,))
    assert observe(aws, counted, lambda *message: sent.append(message), now=1005.0, sender="run-2/report") == []
    assert sent == []  # within its sender's lease

    if by == "its retry":
        again = incidents.Observation(W0, failures=(STALE,))
        observe(aws, again, lambda *message: sent.append(message), now=1006.0, sender="run-1/report")
    else:
        later = incidents.Observation(W0 + layout.SLOT * 2, failures=(STALE,))
        observe(aws, later, lambda *message: sent.append(message), now=1000.0 + incidents.LEASE_SECONDS)

    assert [subject for subject, _ in sent] == [kept["subject"]]  # once: not decided again, only sent
    assert state(aws)["unsent"] == []


def test_a_healthy_window_with_nothing_open_writes_nothing(aws):
    puts = []

    def count(params, **_):
        puts.append(params["Key"])

    aws.s3.meta.events.register("provide-client-params.s3.PutObject", count)
    try:
        observe(aws, incidents.Observation(W0, healthy_task=STALE.healer), lambda *_: None)
    finally:
        aws.s3.meta.events.unregister("provide-client-params.s3.PutObject", count)
    assert puts == []
    assert aws.keys(layout.incidents_key(aws.config.changes_prefix)) == []

"""The live window's ledger writes: every one conditional, a due alert claimed before it is published,
claims and notified entries never overwritten, runs without a logical date, late breaches told to ops.

S3 is the in-memory bucket of test_history (it enforces If-Match / If-None-Match like S3).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from include.price_pipeline import analysis, history, layout, windows
from include.price_pipeline.analysis import INVALID_CHANGE, NOTIFIED, NOTIFY, PUBLISHING
from tests.conftest import utc
from tests.unit.test_history import CONFIG, NOW, T0, MemoryS3, seeded
from tests.unit.test_history import DEFAULT_RULES as RULES

SLOT = T0 + layout.SLOT
KEY = layout.ledger_key(SLOT)
RUN_A, RUN_B = "price_notification/scheduled__a", "price_notification/manual__b"


def analyse(s3, claimant: str, due: bool = True, why_not_due: str = "", **kwargs) -> dict:
    return windows.analyse_window(s3, CONFIG, SLOT, RULES, due, why_not_due, "http://ui/run", claimant=claimant)


def entry(s3: MemoryS3) -> dict:
    return json.loads(s3.objects[KEY])


def test_a_due_breach_is_claimed_in_the_ledger_before_anything_is_published():
    s3 = seeded({T0: 100.0, SLOT: 103.0})

    result = analyse(s3, RUN_A)

    assert result["decision"] == NOTIFY
    stored = entry(s3)
    assert (stored["decision"], stored["claimed_by"], stored["sns_message_id"]) == (PUBLISHING, RUN_A, None)
    assert result["entry"]["decision"] == NOTIFY
    assert "claimed_by" not in result["entry"]
    assert result["subject"] == "ETH/USDT up 3.00% in 5 min: 103.00"


def test_a_second_run_of_the_window_finds_the_claim_and_does_not_publish():
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    analyse(s3, RUN_A)

    second = analyse(s3, RUN_B)

    assert second["decision"] == windows.CLAIMED_ELSEWHERE
    with pytest.raises(windows.ClaimLost):
        windows.start_publish(s3, CONFIG, SLOT, RUN_B)
    windows.start_publish(s3, CONFIG, SLOT, RUN_A)
    assert entry(s3)[windows.PUBLISH_STARTED] is True


def test_a_claim_written_between_our_read_and_our_write_wins_and_ours_is_refused():
    """The conditional write itself decides: the read said 'no entry', yet only one claim lands."""
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    real_put = s3.put_object

    def someone_claims_first(**kwargs):
        if kwargs["Key"] == KEY and KEY not in s3.objects:
            s3.objects[KEY] = b'{"decision": "publishing", "claimed_by": "other/run"}\n'
        return real_put(**kwargs)

    s3.put_object = someone_claims_first

    result = analyse(s3, RUN_A)

    assert result["decision"] == windows.CLAIMED_ELSEWHERE
    assert entry(s3)["claimed_by"] == "other/run"


def test_only_the_claimant_replaces_its_claim_with_notified_and_nobody_overwrites_notified():
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    claimed = analyse(s3, RUN_A)
    windows.start_publish(s3, CONFIG, SLOT, RUN_A)
    with pytest.raises(windows.ClaimLost):
        windows.record_notified(s3, CONFIG, claimed["entry"], "m-0", RUN_B)

    notified = windows.record_notified(s3, CONFIG, claimed["entry"], "m-1", RUN_A)

    assert entry(s3) == notified
    assert notified["decision"] == NOTIFIED
    assert "claimed_by" not in notified
    with pytest.raises(windows.ClaimLost):
        windows.record_notified(s3, CONFIG, claimed["entry"], "m-2", RUN_A)
    calm = seeded({T0: 100.0, SLOT: 100.1})
    calm.objects[KEY] = s3.objects[KEY]
    assert analyse(calm, RUN_B)["decision"] == NOTIFIED, "a later below_threshold never replaces notified"
    assert entry(calm)["sns_message_id"] == "m-1"
    with pytest.raises(windows.AlreadyNotified):
        windows.start_publish(s3, CONFIG, SLOT, RUN_A)


def test_a_retry_that_finds_its_own_claim_already_publishing_does_not_publish_again():
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    analyse(s3, RUN_A)
    windows.start_publish(s3, CONFIG, SLOT, RUN_A)  # then the worker dies, before or after SNS took it

    with pytest.raises(windows.ClaimLeft, match="claim left by an earlier publish"):
        windows.start_publish(s3, CONFIG, SLOT, RUN_A)
    assert analyse(s3, RUN_A)["decision"] == NOTIFY, "a cleared run keeps its claim"
    with pytest.raises(windows.ClaimLeft):
        windows.start_publish(s3, CONFIG, SLOT, RUN_A)


def test_a_released_claim_is_claimed_and_published_afresh():
    """README: an operator who found no alert deletes the entry and clears the run."""
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    analyse(s3, RUN_A)
    windows.start_publish(s3, CONFIG, SLOT, RUN_A)
    del s3.objects[KEY]

    again = analyse(s3, RUN_A)
    windows.start_publish(s3, CONFIG, SLOT, RUN_A)

    assert again["decision"] == NOTIFY
    assert windows.record_notified(s3, CONFIG, again["entry"], "m", RUN_A)["decision"] == NOTIFIED


def test_a_retried_analysis_keeps_its_own_claim_and_another_run_is_told_it_is_claimed(caplog):
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    claimed = analyse(s3, RUN_A)

    again = analyse(s3, RUN_A)
    other = analyse(s3, RUN_B)

    assert again == claimed
    assert other["decision"] == windows.CLAIMED_ELSEWHERE
    assert f"claimed for publishing by {RUN_A}" in caplog.text


def test_every_ledger_write_of_the_live_path_is_conditional():
    s3 = seeded({T0: 100.0, SLOT: 100.1})
    conditions = []
    real_put = s3.put_object

    def recording(**kwargs):
        conditions.append(("IfNoneMatch" in kwargs, "IfMatch" in kwargs))
        return real_put(**kwargs)

    s3.put_object = recording
    analyse(s3, RUN_A)  # creates below_threshold
    s3.objects[layout.analysis_key(SLOT)] = seeded({SLOT: 103.0}).objects[layout.analysis_key(SLOT)]
    claimed = analyse(s3, RUN_B)  # replaces it with a claim
    windows.start_publish(s3, CONFIG, SLOT, RUN_B)
    windows.record_notified(s3, CONFIG, claimed["entry"], "m", RUN_B)

    assert conditions == [(True, False), (False, True), (False, True), (False, True)]


def test_a_non_finite_change_is_refused_with_its_reason_and_recorded_without_infinity():
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    s3.objects[layout.analysis_key(T0)] = s3.objects[layout.analysis_key(T0)].replace(b",100.0,", b",5e-324,")

    with pytest.raises(windows.WindowFailed, match="not a finite number"):
        analyse(s3, RUN_A)

    stored = s3.objects[KEY]
    assert json.loads(stored)["decision"] == INVALID_CHANGE
    assert b"Infinity" not in stored
    assert json.loads(stored)["change_pct"] is None


def test_a_canonical_csv_with_an_infinite_price_fails_the_window_with_a_reason():
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    s3.objects[layout.analysis_key(T0)] = s3.objects[layout.analysis_key(T0)].replace(b",100.0,", b",inf,")

    with pytest.raises(windows.WindowFailed, match="not a finite positive number"):
        analyse(s3, RUN_A)


def test_a_breach_suppressed_only_for_lateness_carries_a_line_for_ops():
    s3 = seeded({T0: 100.0, SLOT: 103.0})

    late = analyse(s3, RUN_A, due=False, why_not_due="window ended more than max_alert_age (15 min) ago")
    backfill = analyse(seeded({T0: 100.0, SLOT: 103.0}), RUN_B, due=False, why_not_due="backfill run (off)")

    assert late["decision"] == "suppressed_backfill"
    assert late["ops_notice"].startswith(f"Breach of window {layout.slot_stamp(SLOT)} not sent: window ended more")
    assert "+3.00%" in late["ops_notice"]
    assert "\n" not in late["ops_notice"]
    assert backfill["ops_notice"] is None


@pytest.mark.parametrize(
    ("run_after", "expected"),
    [
        (utc(2026, 1, 5, 10, 7, 12), utc(2026, 1, 5, 10, 0)),
        (utc(2026, 1, 5, 10, 5), utc(2026, 1, 5, 10, 0)),
        (utc(2026, 1, 5, 0, 1), utc(2026, 1, 4, 23, 55)),
    ],
)
def test_a_run_without_a_logical_date_analyses_the_latest_window_complete_when_it_was_triggered(run_after, expected):
    assert windows.run_window_start(None, run_after) == expected
    assert windows.run_window_start(utc(2026, 1, 1), run_after) == utc(2026, 1, 1)


# ------------------------------------------------------------------ the bulk DAG and the claim


def bulk(s3, publish, claimant: str) -> dict:
    """The bulk DAG over the window, notify_on_backfill on."""
    return history.backfill_history(
        s3, CONFIG, T0, SLOT + layout.SLOT, RULES, True, NOW, publish, "", claimant=claimant
    )


def test_the_bulk_run_never_overwrites_a_live_claim_and_does_not_publish_a_claimed_window():
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    analyse(s3, RUN_A)
    claim = s3.objects[KEY]
    sent = []

    summary = bulk(s3, lambda alert: sent.append(alert) or "m", "bulk")

    assert s3.objects[KEY] == claim
    assert sent == []
    assert summary["claimed_elsewhere"] == 1
    assert history.write_ledger(s3, CONFIG.bucket, layout.CHANGES_PREFIX, {KEY: b"x\n"}, SLOT, SLOT) == {
        "written": 0,
        "unchanged": 0,
        "kept_notified": 0,
        "kept_publishing": 1,
    }


def test_the_bulk_run_claims_before_it_publishes_and_a_live_run_then_finds_the_claim():
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    seen = []

    def publish(alert):
        seen.append(entry(s3))
        return "m-bulk"

    bulk(s3, publish, "bulk/r")

    assert [(e["decision"], e["claimed_by"], e[windows.PUBLISH_STARTED]) for e in seen] == [
        (PUBLISHING, "bulk/r", True)
    ]
    assert (entry(s3)["decision"], entry(s3)["sns_message_id"]) == (NOTIFIED, "m-bulk")
    assert analyse(s3, RUN_A)["decision"] == NOTIFIED


def test_a_bulk_retry_reports_the_claims_its_earlier_try_left_and_does_not_publish_them():
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    analyse(s3, "bulk/r")  # the earlier try claimed, then died

    with pytest.raises(history.ClaimsLeft, match="2025-03-31T22:05:00Z"):
        bulk(s3, lambda alert: pytest.fail("sent"), "bulk/r")


def test_a_range_where_every_window_was_quarantined_fails_with_the_counts():
    s3 = MemoryS3()
    for slot in layout.slots_between(T0, T0 + 4 * layout.SLOT):
        s3.objects[layout.quarantine_keys(slot, f"raw/{slot}")[1]] = b'{"reason": "x"}'

    with pytest.raises(history.NoUsableWindow) as failure:
        history.backfill_history(s3, CONFIG, T0, T0 + 4 * layout.SLOT, RULES, False, NOW)

    assert str(failure.value) == (
        "no usable window from 2025-03-31T22:00:00Z to 2025-03-31T22:20:00Z: 4 windows, "
        "4 without a canonical record, 4 quarantined objects"
    )


def test_the_run_log_names_the_object_used_and_those_the_glue_job_says_it_superseded(caplog):
    """Hook for the Glue job's ``superseded`` column (a JSON list); CSVs without it read as before."""
    s3 = seeded({T0: 100.0, SLOT: 100.1})
    key = layout.analysis_key(SLOT)
    header, row = s3.objects[key].decode().splitlines()
    older = layout.ingestion_key(SLOT, ".json")
    s3.objects[key] = f'{header},superseded\n{row},"[""{older}""]"\n'.encode()

    analyse(s3, RUN_A)

    assert f"superseded older objects: {older}" in caplog.text


def test_a_runs_window_is_a_plain_datetime_that_a_cooldown_can_divide():
    """Airflow hands the data interval as pendulum times; their differences are pendulum intervals, which
    ``//`` by a timedelta fails on (a cooldown's checkpoint divides one: analyse_pairs failed so)."""
    import pendulum

    slot = windows.run_window_start(pendulum.datetime(2026, 1, 5, 10, 0, tz="UTC"), utc(2026, 1, 5, 10, 7))

    assert type(slot) is datetime
    assert slot == utc(2026, 1, 5, 10, 0)
    assert analysis.suppressed_by(slot, "up", lambda window: None, timedelta(minutes=15)) is None


# ------------------------------------------------------------------ publishing the default pair's claim


def test_a_publish_sns_refused_gets_its_mark_back_and_the_retry_sends_it_once():
    """As for every other pair: an error answer from SNS means not sent, so the claim is not left for ops
    (the default pair's claim was left started before the one publish task, paging Alert claim left)."""
    from botocore.exceptions import ClientError

    s3 = seeded({T0: 100.0, SLOT: 103.0})
    alert = analyse(s3, RUN_A)
    sent = []

    def refused(_alert):
        raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "Publish")

    outcome, why = windows.publish_claimed(s3, CONFIG, SLOT, RUN_A, alert, refused)

    assert outcome == "failed"
    assert "SNS refused the Publish" in why
    assert (entry(s3)["decision"], windows.PUBLISH_STARTED in entry(s3)) == (PUBLISHING, False)
    assert windows.publish_claimed(s3, CONFIG, SLOT, RUN_A, alert, lambda a: sent.append(a) or "m-1") == ("sent", "m-1")
    assert (entry(s3)["decision"], entry(s3)["sns_message_id"], len(sent)) == (NOTIFIED, "m-1", 1)
    assert windows.publish_claimed(s3, CONFIG, SLOT, RUN_A, alert, sent.append)[0] == "skipped"


def test_a_publish_without_an_answer_keeps_its_mark_and_the_retry_leaves_it_to_ops():
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    alert = analyse(s3, RUN_A)

    def no_answer(_alert):
        raise ConnectionError("reset by peer")

    with pytest.raises(ConnectionError):
        windows.publish_claimed(s3, CONFIG, SLOT, RUN_A, alert, no_answer)

    outcome, why = windows.publish_claimed(s3, CONFIG, SLOT, RUN_A, alert, lambda a: pytest.fail("sent again"))
    assert outcome == "left"
    assert "claim left by an earlier publish" in why
    assert windows.publish_claimed(s3, CONFIG, SLOT, RUN_B, alert, lambda a: pytest.fail("not ours"))[0] == "skipped"

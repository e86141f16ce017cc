"""The ledger, for every pair (the default one here): every write conditional, a due alert claimed before it
is published, claims and notified entries never overwritten, a publish SNS refused vs one without an answer,
runs without a logical date, late breaches and refused changes told to ops, the migration of old entries.

S3 is the in-memory bucket of test_history (it enforces If-Match / If-None-Match like S3).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from include.price_pipeline import alerts, analysis, layout, ledger, migrate, windows
from include.price_pipeline.analysis import INVALID_CHANGE, NOTIFIED, NOTIFY, PUBLISHING
from tests.conftest import utc
from tests.unit.test_history import CONFIG, OTHER, T0, MemoryS3, seeded, with_other
from tests.unit.test_history import DEFAULT_RULES as RULES

SLOT = T0 + layout.SLOT
KEY = layout.pairs_ledger_key(SLOT)
PAIR, RULE = RULES.default_pair, RULES.default_rule.name
RUN_A, RUN_B = "price_notification/scheduled__a", "price_notification/manual__b"


def analyse(s3, claimant: str, due: bool = True, why_not_due: str = "") -> dict:
    return ledger.analyse_pairs(s3, CONFIG, RULES, SLOT, due, why_not_due, "http://ui/run", claimant)


def publish(s3, claimant: str, due: list[dict], send) -> dict:
    return ledger.publish_alerts(s3, CONFIG, SLOT, due, claimant, send, other_try_wait=0.0)


def entry(s3: MemoryS3) -> dict:
    return ledger.parse_entries(s3.objects[KEY], KEY)[PAIR]


def rule(s3: MemoryS3) -> dict:
    return entry(s3)["rules"][RULE]


def test_a_due_breach_is_claimed_in_the_ledger_before_anything_is_published():
    s3 = seeded({T0: 100.0, SLOT: 103.0})

    result = analyse(s3, RUN_A)

    assert [alert["subject"] for alert in result["alerts"]] == ["ETH/USDT up 3.00% in 5 min: 103.00"]
    assert (entry(s3)["decision"], entry(s3)["claimed_by"]) == (PUBLISHING, RUN_A)
    assert (rule(s3)["decision"], rule(s3)["sns_message_id"]) == (NOTIFY, None)


def test_a_second_run_of_the_window_finds_the_claim_and_does_not_publish():
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    due = analyse(s3, RUN_A)["alerts"]

    second = analyse(s3, RUN_B)

    assert second["alerts"] == []
    assert publish(s3, RUN_B, due, lambda a: pytest.fail("not ours"))["skipped"]
    assert publish(s3, RUN_A, due, lambda a: "m-1")["sent"] == {f"{PAIR} {RULE}": "m-1"}


def test_a_claim_written_between_our_read_and_our_write_wins_and_ours_is_not_published():
    """The conditional write itself decides: the first write found no object, yet only one claim holds."""
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    real_put = s3.put_object
    other = seeded({T0: 100.0, SLOT: 103.0})
    analyse(other, "other/run")

    def someone_claims_first(**kwargs):
        if kwargs["Key"] == KEY and KEY not in s3.objects:
            s3.objects[KEY] = other.objects[KEY]
        return real_put(**kwargs)

    s3.put_object = someone_claims_first

    result = analyse(s3, RUN_A)

    assert result["alerts"] == []
    assert entry(s3)["claimed_by"] == "other/run"


def test_only_the_claimant_records_notified_and_nobody_overwrites_notified():
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    due = analyse(s3, RUN_A)["alerts"]

    assert publish(s3, RUN_B, due, lambda a: pytest.fail("not ours"))["sent"] == {}
    assert publish(s3, RUN_A, due, lambda a: "m-1")["sent"] == {f"{PAIR} {RULE}": "m-1"}

    assert (entry(s3)["decision"], rule(s3)["decision"], rule(s3)["sns_message_id"]) == (NOTIFIED, NOTIFIED, "m-1")
    assert "claimed_by" not in entry(s3)
    assert publish(s3, RUN_A, due, lambda a: pytest.fail("sent again"))["skipped"]
    calm = seeded({T0: 100.0, SLOT: 100.1})
    calm.objects[KEY] = s3.objects[KEY]
    assert analyse(calm, RUN_B)["decisions"] == {PAIR: {RULE: NOTIFIED}}, "a later below_threshold never replaces it"
    assert rule(calm)["sns_message_id"] == "m-1"


def test_a_publish_without_an_answer_keeps_its_mark_and_the_retry_leaves_it_to_ops():
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    due = analyse(s3, RUN_A)["alerts"]

    def no_answer(_alert):
        raise ConnectionError("reset by peer")

    first = publish(s3, RUN_A, due, no_answer)
    again = analyse(s3, RUN_A)["alerts"]
    second = publish(s3, RUN_A, again, lambda a: pytest.fail("sent again"))

    assert "may have been sent" in first["left"][0]
    assert again == due, "a cleared run keeps its claim"
    assert "may have been sent" in second["left"][0]
    assert rule(s3)[ledger.PUBLISH_STARTED] is True


def test_a_retry_started_after_the_first_try_marked_waits_for_it_and_is_not_a_claim_left(monkeypatch):
    """Issue 35: a second try that began after the first try had marked its alerts (a retry of a try Airflow
    thought dead, still publishing) called them *Alert claim left* and failed, though the first try sent and
    recorded them. A mark younger than OTHER_TRY_WAIT_SECONDS belongs to a try that may still record it."""
    import threading

    s3 = seeded({T0: 100.0, SLOT: 103.0})
    due = analyse(s3, RUN_A)["alerts"]
    recorded = threading.Event()

    def first_try_sends(alert):  # the first try, marked: the retry starts now, then the first one records
        threading.Thread(target=retry).start()
        return "m-1"

    outcome = {}

    def retry():
        outcome.update(ledger.publish_alerts(s3, CONFIG, SLOT, due, RUN_A, lambda a: pytest.fail("sent twice"), 30.0))
        recorded.set()

    first = publish(s3, RUN_A, due, first_try_sends)
    assert recorded.wait(30)

    assert first["sent"] == {f"{PAIR} {RULE}": "m-1"}
    assert outcome["left"] == []
    assert "another try of this run published it (SNS message m-1)" in outcome["skipped"][0]
    assert (rule(s3)["decision"], ledger.STARTED_AT in rule(s3)) == (NOTIFIED, False)


def test_a_mark_older_than_the_wait_is_a_claim_left_at_once(monkeypatch):
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    due = analyse(s3, RUN_A)["alerts"]
    publish(s3, RUN_A, due, lambda a: (_ for _ in ()).throw(ConnectionError("no answer")))
    later = ledger._now() + timedelta(seconds=ledger.OTHER_TRY_WAIT_SECONDS + 1)
    monkeypatch.setattr(ledger, "_now", lambda: later)

    retry = ledger.publish_alerts(s3, CONFIG, SLOT, due, RUN_A, lambda a: pytest.fail("sent again"))

    assert "may have been sent" in retry["left"][0]


def test_a_publish_sns_refused_gets_its_mark_back_and_the_retry_sends_it_once():
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    due = analyse(s3, RUN_A)["alerts"]
    sent = []

    def refused(_alert):
        raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "Publish")

    first = publish(s3, RUN_A, due, refused)

    assert "SNS refused the Publish" in first["failed"][0]
    assert (entry(s3)["decision"], ledger.PUBLISH_STARTED in rule(s3)) == (PUBLISHING, False)
    assert publish(s3, RUN_A, due, lambda a: sent.append(a) or "m-1")["sent"] == {f"{PAIR} {RULE}": "m-1"}
    assert (rule(s3)["decision"], rule(s3)["sns_message_id"], len(sent)) == (NOTIFIED, "m-1", 1)


def test_a_released_claim_is_claimed_and_published_afresh():
    """README: an operator who found no alert deletes the pair's line and clears the run."""
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    publish(s3, RUN_A, analyse(s3, RUN_A)["alerts"], lambda a: (_ for _ in ()).throw(ConnectionError("x")))
    del s3.objects[KEY]

    again = analyse(s3, RUN_A)["alerts"]

    assert publish(s3, RUN_A, again, lambda a: "m")["sent"] == {f"{PAIR} {RULE}": "m"}
    assert rule(s3)["decision"] == NOTIFIED


def test_a_retried_analysis_keeps_its_own_claim_and_another_run_is_told_it_is_claimed(caplog):
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    claimed = analyse(s3, RUN_A)

    again = analyse(s3, RUN_A)
    other = analyse(s3, RUN_B)

    assert again["alerts"] == claimed["alerts"]
    assert other["alerts"] == []
    assert f"is publishing by {RUN_A}: this run does not publish it" in caplog.text


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
    due = analyse(s3, RUN_B)["alerts"]  # replaces it with a claim
    publish(s3, RUN_B, due, lambda a: "m")  # marks it started, then records it notified

    # A window's analysis first tries to create its object unread (If-None-Match); the second finds it there,
    # reads it and writes over that version (If-Match), as do the publish's two writes.
    assert conditions == [(True, False), (True, False), (False, True), (False, True), (False, True)]


def test_a_non_finite_change_is_recorded_without_infinity_never_sent_and_told_to_ops():
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    s3.objects[layout.analysis_key(T0)] = s3.objects[layout.analysis_key(T0)].replace(b",100.0,", b",5e-324,")

    result = analyse(s3, RUN_A)

    assert result["alerts"] == []
    assert (rule(s3)["decision"], rule(s3)["change_pct"]) == (INVALID_CHANGE, None)
    assert b"Infinity" not in s3.objects[KEY]
    assert f"Changes of window {layout.slot_stamp(SLOT)} refused:\n- {PAIR} rule {RULE}: " in result["ops_notice"]
    assert "not a finite number" in result["ops_notice"]


def test_a_canonical_csv_that_is_not_canonical_holds_no_record_and_ops_are_told_which():
    """Review of one lane: a bad CSV raised for the whole window, so one file read as a reference stopped every
    pair's alerts for as long as rules looked back at it. Now it is read as no record, named to ops."""
    s3 = seeded({T0 - layout.SLOT: 100.0, T0: 100.0, SLOT: 103.0})
    s3.objects[layout.analysis_key(T0)] = s3.objects[layout.analysis_key(T0)].replace(b",100.0,", b",inf,")

    result = analyse(s3, RUN_A)

    assert rule(s3)["reference"]["timestamp"] == layout.iso(T0 - layout.SLOT)  # the next earlier record
    assert [alert["pair"] for alert in result["alerts"]] == [PAIR]
    assert f'Canonical CSVs not read: "{layout.analysis_key(T0)}": ' in result["ops_notice"]
    assert "not a finite positive number" in result["ops_notice"]


def test_a_pair_without_a_row_in_the_windows_csv_is_late_and_holds_no_other_pair():
    """One CSV holds every pair's row: a pair the Glue job wrote no row for is late, the others go on."""
    s3 = seeded({T0: 100.0}, others={T0: 99.0, SLOT: 101.0})

    result = ledger.analyse_pairs(s3, CONFIG, with_other(RULES), SLOT, True, "", "u", RUN_A)

    assert [(a["pair"], a["rule"]) for a in result["alerts"]] == [(OTHER, "cross-100")]
    assert result["late"] == {PAIR: "no record of the window when it was analysed"}
    assert set(ledger.parse_entries(s3.objects[KEY])) == {OTHER}


def test_stray_keys_among_the_canonical_csvs_are_not_read():
    """Review of one lane: a key with no slot stamp (``_SUCCESS``) in a day partition the rules look back
    into failed every pair's analysis; another key of the window's folder was parsed as a CSV."""
    midnight = utc(2025, 4, 1)  # its look-back lists the whole day before
    s3 = seeded({midnight - layout.SLOT: 100.0, midnight: 103.0})
    s3.objects[layout.ANALYSIS_PREFIX + layout.partition(midnight - layout.SLOT) + "_SUCCESS"] = b""
    s3.objects[layout.analysis_key(midnight - layout.SLOT).replace(".csv", ".csv.bak")] = b"not a csv"

    result = ledger.analyse_pairs(s3, CONFIG, RULES, midnight, True, "", "u", RUN_A)

    assert [alert["pair"] for alert in result["alerts"]] == [PAIR]


def test_a_window_without_any_pairs_record_fails_with_each_pairs_reason():
    s3 = seeded({T0: 100.0})

    with pytest.raises(windows.WindowFailed, match=f"no pair has a record to decide \\({PAIR}: no record of the"):
        analyse(s3, RUN_A)
    assert KEY not in s3.objects


def test_a_breach_suppressed_only_for_lateness_carries_a_line_for_ops():
    s3 = seeded({T0: 100.0, SLOT: 103.0})

    late = analyse(s3, RUN_A, due=False, why_not_due="window ended more than max_alert_age (15 min) ago")
    backfill = analyse(seeded({T0: 100.0, SLOT: 103.0}), RUN_B, due=False, why_not_due="backfill run (off)")

    assert rule(s3)["decision"] == "suppressed_backfill"
    assert late["ops_notice"].startswith(
        f"Breaches of window {layout.slot_stamp(SLOT)} not sent: window ended more than max_alert_age (15 min) ago"
    )
    assert f"- {PAIR} rule {RULE}: +3.00% (change)" in late["ops_notice"]
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


def test_the_run_log_names_the_object_used_and_those_the_glue_job_says_it_superseded(caplog):
    """Hook for the Glue job's ``superseded`` column (a JSON list); CSVs without it read as before."""
    s3 = seeded({T0: 100.0, SLOT: 100.1})
    key = layout.analysis_key(SLOT)
    header, row = s3.objects[key].decode().splitlines()
    older = layout.ingestion_key(SLOT, ".json", pair="ETH/USDT")
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


#: A pair's text as a hostile ledger line could carry it: a forged line, a Slack mention, ESC, RLO.
FORGED_PAIR = "BTC/USDT\nReason: all fine <!channel> \x1b[2J\u202e"


@pytest.mark.parametrize(
    "lines",
    [
        [{"pair": FORGED_PAIR, "decision": "bogus"}],
        [{"pair": FORGED_PAIR, "decision": "analysed", "rules": {"move-5m": {"decision": "below_threshold"}}}] * 2,
    ],
    ids=["not-an-entry", "listed-twice"],
)
def test_a_damaged_ledger_quotes_the_pair_text_it_read(lines):
    """Issue 35: DamagedLedger put the line's raw pair text in the failure's Reason (ops' message, Slack)."""
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)

    with pytest.raises(ledger.DamagedLedger) as damaged:
        ledger.parse_entries(body, KEY)

    reason = str(damaged.value)
    assert f"line {len(lines)}: pair {alerts.quoted(FORGED_PAIR)}" in reason
    assert reason.isascii()
    assert reason.isprintable()
    assert "<!channel>" not in reason


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (lambda line: line["rules"][RULE].pop("reference"), 'due rule "move-5m" lacks what its alert says'),
        (lambda line: line.update(rules={}), "not an entry with a decision and each rule's"),
        (lambda line: line["rules"][RULE].update(decision="below_threshold"), "claimed without a due rule"),
    ],
    ids=["no-reference", "no-rules", "claimed-nothing-due"],
)
def test_a_tampered_claimed_line_fails_the_window_before_anything_is_written_or_sent(tamper, problem):
    """Issue 35: this run's claimed line without its reference raised KeyError after other pairs' claims were
    written (their alerts left unsent); one with ``rules: {}`` skipped its pair silently."""
    s3 = seeded({T0: 100.0, SLOT: 103.0}, others={T0: 99.0, SLOT: 101.0})
    both = with_other(RULES)
    claimed = ledger.analyse_pairs(s3, CONFIG, both, SLOT, True, "", "http://ui/run", RUN_A)["alerts"]
    assert {alert["pair"] for alert in claimed} == {PAIR, OTHER}  # both pairs claimed by RUN_A
    lines = [json.loads(line) for line in s3.objects[KEY].splitlines()]
    tamper(next(line for line in lines if line["pair"] == PAIR))
    s3.objects[KEY] = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    before = dict(s3.objects)

    with pytest.raises(ledger.DamagedLedger, match=problem):
        ledger.analyse_pairs(s3, CONFIG, both, SLOT, True, "", "http://ui/run", RUN_A)
    with pytest.raises(ledger.DamagedLedger, match=problem):
        publish(s3, RUN_A, [a for a in claimed if a["pair"] == OTHER], lambda alert: pytest.fail("sent"))

    assert s3.objects == before


# ------------------------------------------------------------------ migrating entries of before one lane

OLD = layout.ledger_key(SLOT)


def migrated(s3: MemoryS3) -> dict:
    s3.delete_object = lambda Bucket, Key: s3.objects.pop(Key)  # noqa: N803 - boto3's argument names
    return migrate.migrate(s3, CONFIG, "ETH/USDT", RULE)


def old_entry(decision: str, **fields) -> bytes:
    entry = {"window_start": layout.iso(SLOT), "window_end": layout.iso(SLOT + layout.SLOT), "pair": PAIR,
             "latest": {"timestamp": layout.iso(SLOT), "weighted_average": 103.0, "source_key": "k"},
             "previous": {"timestamp": layout.iso(T0), "weighted_average": 100.0, "source_key": "j"},
             "change_pct": 3.0, "abs_change_pct": 3.0, "direction": "up", "threshold_pct": 1.0, "lookback_minutes": 5,
             "min_abs_move": 0.0, "repeat_windows": 0, "decision": decision, "reason": "change above threshold",
             "sns_message_id": None} | fields  # fmt: skip
    return json.dumps(entry).encode()


def test_the_migration_moves_a_notified_entry_so_that_no_run_sends_its_window_again():
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    s3.objects[OLD] = old_entry(NOTIFIED, sns_message_id="m-old")

    assert migrated(s3) == {"moved": 1, "kept": 0, "changed": 0}

    assert OLD not in s3.objects
    assert (entry(s3)["decision"], rule(s3)["decision"], rule(s3)["sns_message_id"]) == (NOTIFIED, NOTIFIED, "m-old")
    assert (rule(s3)["reference"]["weighted_average"], rule(s3)["lookback_minutes"]) == (100.0, 5)
    assert analyse(s3, RUN_A)["alerts"] == []
    assert migrated(s3) == {"moved": 0, "kept": 0, "changed": 0}, "a second run finds nothing to move"


def test_the_migration_keeps_a_claim_left_started_for_ops_and_every_other_pairs_line():
    s3 = seeded({T0: 100.0, SLOT: 100.1})
    s3.objects[KEY] = ledger.entries_bytes(
        {"SOL/USDT": {"pair": "SOL/USDT", "decision": "analysed", "rules": {"cross-150": {"decision": "no_cross"}}}}
    )
    s3.objects[OLD] = old_entry(PUBLISHING, claimed_by="price_notification/old", publish_started=True)

    migrated(s3)

    assert (entry(s3)["decision"], entry(s3)["claimed_by"]) == (PUBLISHING, "price_notification/old")
    assert (rule(s3)["decision"], rule(s3)[ledger.PUBLISH_STARTED]) == (NOTIFY, True)
    assert set(ledger.parse_entries(s3.objects[KEY])) == {PAIR, "SOL/USDT"}
    due = [{"pair": PAIR, "rule": RULE}]
    assert "may have been sent" in publish(s3, "price_notification/old", due, lambda a: pytest.fail("sent"))["left"][0]


def test_the_migration_never_replaces_a_claimed_entry_a_newer_run_wrote():
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    analyse(s3, RUN_A)
    claim = s3.objects[KEY]
    s3.objects[OLD] = old_entry("below_threshold")

    assert migrated(s3) == {"moved": 0, "kept": 1, "changed": 0}
    assert s3.objects[KEY] == claim
    assert OLD not in s3.objects


def test_the_migration_leaves_an_old_entry_that_changed_while_it_was_moved_and_says_so(caplog):
    """Old code still running may record a claim notified between the migration's read and its delete: the
    object is not deleted (that record would be lost), the run counts it, and a second run moves it."""
    s3 = seeded({T0: 100.0, SLOT: 103.0})
    s3.objects[OLD] = old_entry(PUBLISHING, claimed_by="price_notification/old")
    real_put = s3.put_object

    def old_code_records_notified(**kwargs):
        if kwargs["Key"] == KEY:
            s3.objects[OLD] = old_entry(NOTIFIED, sns_message_id="m-old")
        return real_put(**kwargs)

    s3.put_object = old_code_records_notified

    assert migrated(s3) == {"moved": 1, "kept": 0, "changed": 1}
    assert f"{OLD} changed while it was moved: not deleted" in caplog.text
    s3.put_object = real_put
    assert migrated(s3) == {"moved": 1, "kept": 0, "changed": 0}  # a sent alert replaces the moved claim
    assert (entry(s3)["decision"], rule(s3)["sns_message_id"]) == (NOTIFIED, "m-old")


def test_the_default_pair_with_three_rules_is_accepted_and_each_rule_decided():
    """Issue 34: ETH/USDT watched with a 5-minute change, a 1-hour change and a crossing was refused ("the
    default pair takes one change rule of 5 minutes"). Now it is a pair as any other: each rule decided,
    each due one claimed."""
    from include.price_pipeline import rules

    three = rules.parse({"default_pair": "ETH/USDT", "pairs": {"ETH/USDT": [
        {"name": "move-5m", "kind": "change", "threshold_pct": 1.0, "minutes": 5},
        {"name": "move-1h", "kind": "change", "threshold_pct": 2.0, "minutes": 60},
        {"name": "above-104", "kind": "crossing", "level": 104.0, "direction": "up"}]}})  # fmt: skip
    s3 = seeded({SLOT - timedelta(hours=1): 100.0, T0: 102.0, SLOT: 105.0})

    result = ledger.analyse_pairs(s3, CONFIG, three, SLOT, True, "", "u", RUN_A)

    assert result["decisions"] == {"ETH/USDT": {"move-5m": NOTIFY, "move-1h": NOTIFY, "above-104": NOTIFY}}
    assert sorted(alert["rule"] for alert in result["alerts"]) == ["above-104", "move-1h", "move-5m"]
    assert ledger.parse_entries(s3.objects[KEY])["ETH/USDT"]["decision"] == PUBLISHING

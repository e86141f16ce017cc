"""Once per (pair, rule, window) on the stand-in's S3 (which enforces If-Match / If-None-Match like S3):
a window's other pairs share one ledger object; the claim of a pair's window, its rules published in
parallel batches, retries, crashes and other runs."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from include.price_pipeline import browse, incidents, layout, ledger, rules, windows
from tests.conftest import reads_together, utc
from tests.records import candle, seed_normalized, seed_pairs

pytestmark = pytest.mark.integration

W = utc(2025, 9, 8, 12, 0)  # a day no other test writes
MOVE = {"name": "move-5m", "kind": "change", "threshold_pct": 1.0}
RULES = rules.parse(
    {
        "default_pair": "ETH/USDT",
        "pairs": {
            "ETH/USDT": [{**MOVE, "tolerance_minutes": 55}],
            "BTC/USDT": [
                MOVE,
                {"name": "cross-100k", "kind": "crossing", "level": 100000},
                {"name": "move-1h", "kind": "change", "threshold_pct": 1.0, "minutes": 60},
            ],
            "SOL/USDT": [MOVE],
        },
    }
)


def seed(aws, slot, **prices):
    """The window's canonical CSV: the other pairs' rows with ``prices``, and the default pair's at a constant
    price (it never fires here; without it, the default pair is late too)."""
    seed_normalized(aws.s3, aws.config.bucket, candle(slot, 2000.0))
    seed_pairs(aws.s3, aws.config.bucket, slot, {f"{base}/USDT": price for base, price in prices.items()})


def entries(aws, slot=W) -> dict:
    """The other pairs' entries of the window (the default pair's line beside them never fires here)."""
    found = ledger.parse_entries(aws.get(layout.pairs_ledger_key(slot)))
    return {pair: entry for pair, entry in found.items() if pair != RULES.default_pair}


def analyse(aws, run, slot=W, due=True, why=""):
    return ledger.analyse_pairs(aws.s3, aws.config, RULES, slot, due, why, "url", run)


class Sns:
    """What publish_alerts is given to send with: records each alert, can fail."""

    def __init__(self, fail=None):
        self.sent, self.fail = [], fail

    def __call__(self, alert):
        if self.fail:
            raise self.fail
        self.sent.append((alert["pair"], alert["rule"]))
        return f"msg-{alert['pair']}-{alert['rule']}"


def publish(aws, run, due, sns, slot=W):
    return ledger.publish_alerts(aws.s3, aws.config, slot, due, run, sns)


def test_every_pairs_due_rules_are_claimed_once_in_one_object_and_each_published_once(aws):
    seed(aws, W - layout.SLOT, BTC=99000.0, SOL=150.0)
    seed(aws, W, BTC=101000.0, SOL=153.0)  # BTC +2.02 % and crosses 100k (no record an hour earlier); SOL +2 %

    first = analyse(aws, "dag/run-a")
    assert sorted((a["pair"], a["rule"]) for a in first["alerts"]) == [
        ("BTC/USDT", "cross-100k"),
        ("BTC/USDT", "move-5m"),
        ("SOL/USDT", "move-5m"),
    ]
    assert first["decisions"]["BTC/USDT"]["move-1h"] == "no_previous_record"
    assert aws.keys(layout.ingestion_window_prefix(W, layout.CHANGES_PREFIX)) == [layout.pairs_ledger_key(W)]
    assert {pair: (e["decision"], e["claimed_by"]) for pair, e in entries(aws).items()} == {
        "BTC/USDT": ("publishing", "dag/run-a"),
        "SOL/USDT": ("publishing", "dag/run-a"),
    }
    assert analyse(aws, "dag/run-b")["alerts"] == []  # another run finds the claims
    assert len(analyse(aws, "dag/run-a")["alerts"]) == 3  # a retry of the claimant keeps its claims

    other = Sns()
    assert len(publish(aws, "dag/run-b", first["alerts"], other)["skipped"]) == 3
    assert other.sent == []
    sns = Sns()
    result = publish(aws, "dag/run-a", first["alerts"], sns)
    assert sorted(sns.sent) == sorted((a["pair"], a["rule"]) for a in first["alerts"])
    assert result["sent"]["BTC/USDT move-5m"] == "msg-BTC/USDT-move-5m"
    done = entries(aws)
    assert {pair: e["decision"] for pair, e in done.items()} == {"BTC/USDT": "notified", "SOL/USDT": "notified"}
    assert all("claimed_by" not in e for e in done.values())
    assert {name: r["sns_message_id"] for name, r in done["BTC/USDT"]["rules"].items()} == {
        "move-5m": "msg-BTC/USDT-move-5m",
        "cross-100k": "msg-BTC/USDT-cross-100k",
        "move-1h": None,
    }
    again = Sns()
    assert len(publish(aws, "dag/run-a", first["alerts"], again)["skipped"]) == 3  # a retry after success
    assert again.sent == []
    assert analyse(aws, "dag/run-c")["alerts"] == []


def test_a_later_run_adds_a_late_pair_beside_an_earlier_runs_claim_and_each_publishes_its_own(aws):
    slot = W + layout.SLOT * 72  # over an hour from any other test's records (move-1h looks back an hour)
    seed(aws, slot - layout.SLOT, BTC=99000.0, SOL=150.0)
    seed(aws, slot, BTC=99100.0)  # SOL late; BTC crosses nothing, moves 0.1 %
    first = analyse(aws, "dag/run-a", slot)
    assert first["late"] == {"SOL/USDT": "no record of the window when it was analysed"}
    seed(aws, slot, BTC=101000.0, SOL=153.0)  # the window's Glue run again, with SOL's record (and a fix of BTC)
    assert {p: e["decision"] for p, e in entries(aws, slot).items()} == {"BTC/USDT": "analysed"}

    second = analyse(aws, "dag/run-a", slot)  # e.g. a clear: BTC's analysed entry is replaced, SOL added
    assert sorted((a["pair"], a["rule"]) for a in second["alerts"]) == [
        ("BTC/USDT", "cross-100k"),
        ("BTC/USDT", "move-5m"),
        ("SOL/USDT", "move-5m"),
    ]
    third = analyse(aws, "dag/run-b", slot)  # another run: every claim is kept as it is
    assert third["alerts"] == []
    assert third["late"] == {}
    assert {p: e["claimed_by"] for p, e in entries(aws, slot).items()} == {
        "BTC/USDT": "dag/run-a",
        "SOL/USDT": "dag/run-a",
    }


def test_a_publish_that_may_have_been_sent_is_not_sent_again_and_one_sns_refused_is(aws):
    slot = W + layout.SLOT * 24
    seed(aws, slot - layout.SLOT, BTC=99000.0, SOL=150.0)
    seed(aws, slot, BTC=100100.0, SOL=150.1)  # BTC crosses 100k (+1.1 % too); SOL quiet
    due = analyse(aws, "dag/run-x", slot)["alerts"]
    assert sorted(a["rule"] for a in due) == ["cross-100k", "move-5m"]

    refused = ClientError({"Error": {"Code": "Throttling", "Message": "slow down"}}, "Publish")
    result = publish(aws, "dag/run-x", due, Sns(fail=refused), slot)
    assert len(result["failed"]) == 2  # SNS answered with an error: not sent
    assert not result["left"]
    assert not any(r.get("publish_started") for r in entries(aws, slot)["BTC/USDT"]["rules"].values())

    result = publish(aws, "dag/run-x", due, Sns(fail=ConnectionError("reset by peer")), slot)
    assert len(result["left"]) == 2  # no answer: it may have been sent
    retry = Sns()
    result = publish(aws, "dag/run-x", due, retry, slot)
    assert retry.sent == []
    assert len(result["left"]) == 2
    assert "may have been sent: not publishing again" in result["left"][0]
    assert entries(aws, slot)["BTC/USDT"]["decision"] == "publishing"  # ops decide (README: releasing a claim)


def test_a_backfill_records_a_firing_rule_as_suppressed_and_a_missing_pair_as_late(aws):
    slot = W + layout.SLOT * 48
    seed(aws, slot - layout.SLOT, BTC=99000.0, SOL=150.0)
    seed(aws, slot, BTC=101000.0, SOL=150.0)
    result = analyse(aws, "dag/bf", slot, due=False, why="backfill run")
    assert result["alerts"] == []
    stored = entries(aws, slot)["BTC/USDT"]
    assert stored["decision"] == "analysed"
    assert stored["rules"]["move-5m"]["decision"] == "suppressed_backfill"
    assert stored["rules"]["move-5m"]["reason"] == "backfill run"
    late = "no record of the window when it was analysed"
    with pytest.raises(windows.WindowFailed) as nothing:  # no pair's record at all: nothing to decide
        analyse(aws, "dag/live", slot + layout.SLOT * 3)
    every_pair = ("BTC/USDT", "ETH/USDT", "SOL/USDT")  # the default pair included: no pair is the clock
    assert str(nothing.value).endswith(
        f"no pair has a record to decide ({'; '.join(f'{p}: {late}' for p in every_pair)})"
    )
    assert aws.keys(layout.pairs_ledger_key(slot + layout.SLOT * 3)) == []  # no entry: a later run can decide it
    seed(aws, slot + layout.SLOT * 4, SOL=150.0)
    later = analyse(aws, "dag/live", slot + layout.SLOT * 4)
    assert later["late"] == {"BTC/USDT": late}
    [failure], _ = incidents.late_pairs(later["late"], ["SOL/USDT"])
    assert failure.detail.startswith("- BTC/USDT: no record of the window")


def count_gets(aws, call):
    reads: list[str] = []

    def count(params, **_):
        reads.append(params["Key"])

    event = "provide-client-params.s3.GetObject"
    aws.s3.meta.events.register(event, count)
    try:
        return call(), reads
    finally:
        aws.s3.meta.events.unregister(event, count)


def test_a_windows_first_analysis_reads_one_csv_per_slot_its_rules_decide_from_for_every_pair(aws):
    slot = W + layout.SLOT * 96
    move = {**MOVE, "tolerance_minutes": 55}
    five = rules.parse(
        {"default_pair": "ETH/USDT", "pairs": {"ETH/USDT": [move], "BTC/USDT": [move], "SOL/USDT": [move]}}
    )
    for back in range(12, 1, -1):  # an hour of records: the rules' whole look-back
        seed(aws, slot - layout.SLOT * back, BTC=99000.0 + back, SOL=150.0)
    seed(aws, slot - layout.SLOT, SOL=150.0)  # BTC has no record 5 minutes earlier: its reference is at -10
    seed(aws, slot, BTC=99000.0, SOL=150.0)

    result, reads = count_gets(aws, lambda: ledger.analyse_pairs(aws.s3, aws.config, five, slot, True, "", "u", "r"))

    assert result["decisions"] == {
        "BTC/USDT": {"move-5m": "below_threshold"},
        "ETH/USDT": {"move-5m": "below_threshold"},
        "SOL/USDT": {"move-5m": "below_threshold"},
    }
    assert entries(aws, slot)["BTC/USDT"]["rules"]["move-5m"]["reference"]["timestamp"] == "2025-09-08T19:50:00Z"
    # The window's one CSV of each slot any pair reads, read once for every pair (the default pair's own
    # CSV was a second GET of slots -5 and 0 before one storage shape).
    assert sorted(reads) == [layout.analysis_key(slot - layout.SLOT * back) for back in (2, 1, 0)]


def test_the_bulk_backfill_writes_each_windows_entries_as_a_backfill_run_does_and_parquet_per_pair(aws):
    from datetime import datetime

    from include.price_pipeline import history
    from tests.records import candle, seed_normalized

    start = utc(2025, 9, 10, 6, 0)  # a day no other test writes
    slots = [start + layout.SLOT * i for i in range(6)]
    for i, slot in enumerate(slots):
        seed_normalized(aws.s3, aws.config.bucket, candle(slot, 3000.0 + i))
        seed(aws, slot, BTC=(99000.0, 99500.0, 100500.0, 100600.0, 99800.0, 103000.0)[i], SOL=150.0 + i)

    summary = history.backfill_history(
        aws.s3, aws.config, slots[1], slots[-1] + layout.SLOT, RULES, False, datetime.now().astimezone()
    )  # fmt: skip

    month = aws.keys(layout.month_analysis_prefix(2025, 9))
    with_eth = sum(1 for key in month if key.endswith("/pairs.csv") and b",ETH/USDT," in aws.get(key))
    parquet = {item["key"]: item for item in summary["parquet"]}
    assert parquet[layout.parquet_key(2025, 9, pair="ETH/USDT")]["rows"] == with_eth  # the default pair's rows only
    assert summary["pairs"]["BTC/USDT"]["windows"] == 5
    assert parquet[layout.parquet_key(2025, 9, pair="BTC/USDT")]["rows"] >= 6
    assert parquet[layout.parquet_key(2025, 9, pair="SOL/USDT")]["rows"] >= 6
    bulk = {slot: aws.get(layout.pairs_ledger_key(slot)) for slot in slots[1:]}
    decisions = [ledger.parse_entries(body)["BTC/USDT"]["rules"]["cross-100k"]["decision"] for body in bulk.values()]
    assert decisions == [
        "not_crossed",
        "suppressed_backfill",
        "not_crossed",
        "suppressed_backfill",
        "suppressed_backfill",
    ]
    for slot in slots[1:]:  # what a native backfill run of the window writes: the same bytes
        aws.s3.delete_object(Bucket=aws.config.bucket, Key=layout.pairs_ledger_key(slot))
        analyse(aws, "r", slot, due=False, why="backfill run (notify_on_backfill is off)")
        assert aws.get(layout.pairs_ledger_key(slot)) == bulk[slot]

    damaged_key = layout.pairs_ledger_key(slots[2])  # a damaged object fails the bulk run too, untouched
    aws.put(damaged_key, bulk[slots[2]] + b"not json\n")
    with pytest.raises(ledger.DamagedLedger, match=f"{damaged_key} line 4: not a JSON object"):
        history.backfill_history(
            aws.s3, aws.config, slots[1], slots[-1] + layout.SLOT, RULES, False, datetime.now().astimezone()
        )  # fmt: skip
    assert aws.get(damaged_key) == bulk[slots[2]] + b"not json\n"


def test_the_bulk_backfill_with_notify_on_backfill_publishes_each_due_alert_of_another_pair_once(aws):
    """Issue 19: the bulk DAG recorded every other pair's firing ``suppressed_backfill`` even with
    notify_on_backfill ("this DAG publishes the default pair only"). Now each due (pair, rule, window) is
    claimed in the bulk's ledger pass and published once, as a live run publishes it; a second bulk run or
    a native run of a window after it sends nothing more."""
    from datetime import datetime

    from include.price_pipeline import history

    start = utc(2025, 9, 14, 6, 0)  # a day no other test writes
    slots = [start + layout.SLOT * i for i in range(4)]
    for i, slot in enumerate(slots):
        seed(aws, slot, BTC=(99000.0, 99500.0, 100500.0, 100600.0)[i], SOL=150.0)  # crosses 100k once
    sent = []

    def publish(alert):
        sent.append(alert["subject"])
        return f"msg-{alert['message_attributes']['rule']}"

    def bulk(claimant):
        return history.backfill_history(
            aws.s3, aws.config, slots[1], slots[-1] + layout.SLOT, RULES, True, datetime.now().astimezone(),
            publish, "url", claimant=claimant,
        )  # fmt: skip

    summary = bulk("price_history_backfill/run-1")

    head = aws.s3.head_object(Bucket=aws.config.bucket, Key=layout.pairs_ledger_key(slots[1]))
    assert head["ContentType"] == "application/x-ndjson"  # as the pipeline writes it (was application/json)

    assert sorted(sent) == ["BTC/USDT crossed 100000 upward: 100,500.00", "BTC/USDT up 1.01% in 5 min: 100,500.00"]
    assert (summary["notified"], summary["not_published"]) == (2, 0)
    btc = entries(aws, slots[2])["BTC/USDT"]
    assert btc["decision"] == "notified"
    assert "claimed_by" not in btc
    assert {name: rule["sns_message_id"] for name, rule in btc["rules"].items()} == {
        "cross-100k": "msg-cross-100k", "move-5m": "msg-move-5m", "move-1h": None,
    }  # fmt: skip

    again = bulk("price_history_backfill/run-2")
    assert len(sent) == 2  # nothing more
    assert (again["notified"], again["not_published"]) == (0, 2)  # both found notified: not sent again
    assert analyse(aws, "price_notification/backfill__x", slots[2])["alerts"] == []
    assert entries(aws, slots[2])["BTC/USDT"] == btc


def test_a_late_pair_whose_object_was_quarantined_is_late_with_the_quarantine_reason(aws):
    slot = W + layout.SLOT * 144
    seed(aws, slot - layout.SLOT, BTC=99000.0, SOL=150.0)
    seed(aws, slot, BTC=99000.0)
    source = layout.ingestion_key(slot, ".json", pair="SOL/USDT")
    _copy, reason_key = layout.quarantine_keys(slot, source)
    note = {"source_key": source, "reason": "weighted_average is not a number", "pair": "SOL/USDT"}
    aws.put(reason_key, json.dumps(note))

    late = analyse(aws, "dag/live", slot)["late"]

    assert late == {"SOL/USDT": f'quarantined: "weighted_average is not a number" (object "{source}")'}


# ------------------------------------------------------------------ waiting on earlier windows: one rule for every pair

WAIT = utc(2025, 9, 12, 12, 0)  # a day no other test writes


def test_other_pairs_wait_as_the_default_pair_does_only_for_an_earlier_record_a_run_can_still_normalize(aws):
    """An hour of pairs' CSVs before WAIT but for WAIT-15 min, whose record is there: the scheduler is asked
    about that window alone; while a run can still normalize it the analysis waits, writing nothing."""
    for back in range(1, 13):
        if back != 3:
            seed(aws, WAIT - layout.SLOT * back, BTC=90000.0, SOL=140.0)
    seed(aws, WAIT, BTC=92000.0, SOL=141.0)
    gap = WAIT - layout.SLOT * 3
    aws.put(layout.ingestion_key(gap, ".json", pair="ETH/USDT"), "{}")
    asked = []

    def running(slots):
        asked.append(slots)
        return slots

    with pytest.raises(windows.WindowNotReady, match=layout.slot_stamp(gap)) as waiting:
        ledger.analyse_pairs(aws.s3, aws.config, RULES, WAIT, True, "", "url", "dag/run", running)

    assert waiting.value.windows == [gap]
    assert asked == [[gap]]
    assert aws.keys(layout.pairs_ledger_key(WAIT)) == []  # nothing decided yet
    decided = ledger.analyse_pairs(aws.s3, aws.config, RULES, WAIT, True, "", "url", "dag/run", lambda slots: [])
    assert decided["decisions"]["BTC/USDT"]["move-5m"] == "notify"


def test_an_earlier_window_whose_record_is_missing_holds_no_pair(aws):
    slot = WAIT + layout.SLOT * 30
    seed(aws, slot - layout.SLOT * 2, BTC=90000.0, SOL=140.0)
    seed(aws, slot, BTC=92000.0, SOL=141.0)  # slot - 5 min: no record at all, no CSV

    result = ledger.analyse_pairs(aws.s3, aws.config, RULES, slot, True, "", "url", "dag/run",
                                 lambda slots: pytest.fail(f"asked the scheduler about {slots}"))  # fmt: skip

    assert set(result["decisions"]) == {"BTC/USDT", "ETH/USDT", "SOL/USDT"}
    assert set(entries(aws, slot)) == {"BTC/USDT", "SOL/USDT"}


def test_every_pairs_breach_suppressed_only_for_lateness_reaches_ops_and_a_backfills_does_not(aws):
    late_slot, backfill_slot = WAIT + layout.SLOT * 60, WAIT + layout.SLOT * 90
    for slot in (late_slot, backfill_slot):
        seed(aws, slot - layout.SLOT, BTC=99000.0, SOL=150.0)
        seed(aws, slot, BTC=101000.0, SOL=150.1)  # BTC +2.02 % and crosses 100k; SOL calm
    why_late = "window ended more than max_alert_age (15 min) ago"

    late = analyse(aws, "dag/run-late", late_slot, due=False, why=why_late)
    backfill = analyse(aws, "dag/run-backfill", backfill_slot, due=False, why="backfill run (notify_on_backfill off)")

    assert late["alerts"] == []
    assert late["ops_notice"].splitlines() == [
        f"Breaches of window {layout.slot_stamp(late_slot)} not sent: {why_late} when their records were analysed:",
        "- BTC/USDT rule move-5m: +2.02% (change)",
        "- BTC/USDT rule cross-100k: +2.02% (crossing)",
        "Run: url",
    ]
    assert backfill["ops_notice"] is None


DAMAGED = W + layout.SLOT * 120


def damaged_object(aws, slot, *lines: dict) -> bytes:
    """A window's pairs' ledger object holding ``lines`` as they are (what a hostile writer could leave)."""
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    aws.put(layout.pairs_ledger_key(slot), body)
    return body


def test_a_pair_listed_twice_fails_the_window_and_is_not_sent_again(aws):
    """Notified, then listed again as analysed: the pipeline read the last line and sent the alert again
    while the page read the first. Now every reader refuses the object and nothing is written or sent."""
    seed(aws, DAMAGED - layout.SLOT, BTC=99000.0, SOL=150.0)
    seed(aws, DAMAGED, BTC=101000.0, SOL=150.1)  # BTC +2.02 %, crosses 100k
    first = analyse(aws, "dag/run-a", DAMAGED)
    publish(aws, "dag/run-a", first["alerts"], Sns(), DAMAGED)
    notified = entries(aws, DAMAGED)["BTC/USDT"]
    analysed = {**notified, "decision": "analysed", "rules": {n: {**r, "decision": "below_threshold"}
                                                              for n, r in notified["rules"].items()}}  # fmt: skip
    body = damaged_object(aws, DAMAGED, notified, analysed, entries(aws, DAMAGED)["SOL/USDT"])

    with pytest.raises(ledger.DamagedLedger, match=r'pairs\.jsonl line 2: pair "BTC/USDT" listed twice'):
        analyse(aws, "dag/run-b", DAMAGED)

    assert aws.get(layout.pairs_ledger_key(DAMAGED)) == body
    end = DAMAGED + layout.SLOT
    [row] = browse.history(aws.s3, aws.config, RULES, DAMAGED, end, pair="BTC/USDT")["windows"]
    assert row["decision"] == browse.DAMAGED
    assert 'line 2: pair "BTC/USDT" listed twice' in row["reason"]  # the page shows what the run says


def test_an_entry_without_rules_fails_the_publish_before_any_claim_moves(aws):
    """A pair's entry without ``rules`` beside another pair's claim: the publish task raised a KeyError
    half-way and left the other pair's claim ``publishing`` (an Alert claim left). Now it refuses the
    object before it writes or sends anything."""
    slot = DAMAGED + layout.SLOT * 12
    seed(aws, slot - layout.SLOT, BTC=99000.0, SOL=150.0)
    seed(aws, slot, BTC=101000.0, SOL=153.0)
    due = analyse(aws, "dag/run-a", slot)["alerts"]
    stored = entries(aws, slot)
    without_rules = {k: v for k, v in stored["SOL/USDT"].items() if k != "rules"}
    body = damaged_object(aws, slot, stored["BTC/USDT"], without_rules)
    sns = Sns()

    with pytest.raises(ledger.DamagedLedger, match='pair "SOL/USDT": not an entry with a decision and each rule\'s'):
        publish(aws, "dag/run-a", due, sns, slot)

    assert sns.sent == []
    assert aws.get(layout.pairs_ledger_key(slot)) == body


@pytest.mark.parametrize("line", [b"not json", b"[1, 2]", b'{"decision": "analysed", "rules": {}}'])
def test_a_line_that_is_no_entry_fails_the_window(aws, line):
    slot = DAMAGED + layout.SLOT * 24
    seed(aws, slot, BTC=101000.0, SOL=153.0)
    aws.put(layout.pairs_ledger_key(slot), line + b"\n")

    with pytest.raises(ledger.DamagedLedger, match="line 1: not a JSON object with a pair"):
        analyse(aws, "dag/run-a", slot)

    assert aws.get(layout.pairs_ledger_key(slot)) == line + b"\n"


def overlapping_tries(aws, monkeypatch, slot, sns_a, sns_b, wait=30.0) -> tuple[dict, dict]:
    """Two tries of one run publishing one window at once (a zombie and its retry): both read the window's
    ledger object before either marks it, so one try's marks lose to the other's."""
    import threading

    due = analyse(aws, "dag/run-z", slot)["alerts"]
    reads_together(monkeypatch)
    results = {}

    def attempt(name, sns):
        results[name] = ledger.publish_alerts(aws.s3, aws.config, slot, due, "dag/run-z", sns, wait)

    tries = [threading.Thread(target=attempt, args=args) for args in (("a", sns_a), ("b", sns_b))]
    for thread in tries:
        thread.start()
    for thread in tries:
        thread.join(60)
    return results["a"], results["b"]


class SlowSns(Sns):
    """An SNS that takes a while to answer (or never records: ``dies``)."""

    def __init__(self, seconds=1.0, dies=False):
        super().__init__(fail=ConnectionError("the try died after the Publish") if dies else None)
        self.seconds = seconds

    def __call__(self, alert):
        import time

        time.sleep(self.seconds)
        return super().__call__(alert)


def test_overlapping_tries_of_one_run_send_each_alert_once_and_the_losing_try_calls_nothing_left(aws, monkeypatch):
    """The losing try reported every alert as an Alert claim left (78 false pages in 40 windows of a
    hostile test): it waits for the winner's outcome and says another try published it."""
    slot = DAMAGED + layout.SLOT * 36
    seed(aws, slot - layout.SLOT, BTC=99000.0, SOL=150.0)
    seed(aws, slot, BTC=101000.0, SOL=153.0)  # three due alerts
    sns_a, sns_b = SlowSns(), SlowSns()

    a, b = overlapping_tries(aws, monkeypatch, slot, sns_a, sns_b)

    assert sorted(sns_a.sent + sns_b.sent) == [
        ("BTC/USDT", "cross-100k"),
        ("BTC/USDT", "move-5m"),
        ("SOL/USDT", "move-5m"),
    ]
    assert a["left"] == b["left"] == []
    assert a["failed"] == b["failed"] == []
    loser = a if not sns_a.sent else b
    assert len(loser["skipped"]) == 3
    assert all("another try of this run published it (SNS message msg-" in reason for reason in loser["skipped"])
    assert {e["decision"] for e in entries(aws, slot).values()} == {"notified"}


def test_an_overlapping_try_that_dies_after_the_publish_leaves_its_claims_for_ops(aws, monkeypatch):
    slot = DAMAGED + layout.SLOT * 48
    seed(aws, slot - layout.SLOT, BTC=99000.0, SOL=150.0)
    seed(aws, slot, BTC=101000.0, SOL=153.0)
    dying_a, dying_b = SlowSns(0.2, dies=True), SlowSns(0.2, dies=True)

    a, b = overlapping_tries(aws, monkeypatch, slot, dying_a, dying_b, wait=2.0)

    assert len(a["left"]) == len(b["left"]) == 3  # the winner's Publish had no answer; the loser never saw one
    loser = a if "another try of this run started it" in " ".join(a["left"]) else b
    assert all("another try of this run started it 2 s ago" in reason for reason in loser["left"])

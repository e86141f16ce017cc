"""The window's sensor: it waits for every configured pair's record, or for the deadline once one is there,
so no pair is the window's clock (issue 19). Against moto's S3, each decision as the worker takes it:
done, deferred (to which trigger, until when), timed out, skipped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from moto import mock_aws

from include.price_pipeline import layout
from include.price_pipeline.operators import SLOW_LOOK, WindowRecordSensor, _now

REAL_NOW = _now

BUCKET = "raw"
PAIRS = ["ETH/USDT", "BTC/USDT", "SOL/USDT"]
DEADLINE, TIMEOUT = 120, 900


@pytest.fixture
def s3(monkeypatch, clock):
    import boto3

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


def sensor(deferrable: bool = True) -> WindowRecordSensor:
    return WindowRecordSensor(
        task_id="wait_for_price_record",
        aws_conn_id=None,
        bucket_name=BUCKET,
        prefix=layout.INGESTION_PREFIX,
        pairs=PAIRS,
        default_pair="ETH/USDT",
        deadline_seconds=DEADLINE,
        deferrable=deferrable,
        timeout=TIMEOUT,
        poke_interval=2,
    )


SLOT = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)  # every test's window, [10:00, 10:05)


@pytest.fixture
def clock(monkeypatch):
    """The sensor's now: set it with ``clock(seconds after the window ended)``."""
    from include.price_pipeline import operators

    def set_to(after_end: float) -> datetime:
        now = SLOT + layout.SLOT + timedelta(seconds=after_end)
        monkeypatch.setattr(operators, "_now", lambda: now)
        return now

    set_to(10)
    return set_to


def context(slot: datetime, run_type: str = "scheduled") -> dict:
    return {"dag_run": SimpleNamespace(run_type=run_type, run_after=slot + layout.SLOT), "data_interval_start": slot}


def land(s3, slot: datetime, *pairs: str) -> None:
    for pair in pairs:
        s3.put_object(Bucket=BUCKET, Key=layout.ingestion_key(slot, ".json", pair=pair))


def deferred(call):
    from airflow.sdk.exceptions import TaskDeferred

    with pytest.raises(TaskDeferred) as caught:
        call()
    return caught.value


def test_the_deferral_timeout_is_one_the_task_runner_can_send_to_its_supervisor(s3, monkeypatch):
    """On the real clock. Airflow's clock is pendulum's, whose intervals msgpack refuses: the sensor's
    deferral failed on the stack ("Objects of type Interval are not supported") and passed on retries."""
    import msgspec
    from airflow.sdk.execution_time.comms import _msgpack_enc_hook

    from include.price_pipeline import operators

    monkeypatch.setattr(operators, "_now", REAL_NOW)
    wait = deferred(lambda: sensor().execute(context(layout.slot_start(REAL_NOW()) - layout.SLOT)))

    msgspec.msgpack.Encoder(enc_hook=_msgpack_enc_hook).encode({"trigger_timeout": wait.timeout})


def test_every_pairs_record_there_is_done_at_once(s3):
    slot = SLOT
    land(s3, slot, *PAIRS)

    assert sensor().execute(context(slot)) is None


def test_with_the_default_pairs_record_missing_it_waits_for_that_record_until_the_deadline_only(s3):
    slot = SLOT
    land(s3, slot, "BTC/USDT", "SOL/USDT")

    waiting = sensor()
    wait = deferred(lambda: waiting.execute(context(slot)))

    assert waiting.bucket_key == wait.trigger.bucket_key == [layout.record_glob(slot, "ETH/USDT")]
    assert wait.trigger.wildcard_match is True
    assert wait.timeout == timedelta(seconds=DEADLINE - 10)  # now is 10 s after the window's end
    assert wait.kwargs == {"missing_before": ["ETH/USDT"]}


def test_past_the_deadline_it_goes_on_with_the_pairs_there_and_names_the_late_ones(s3, clock, caplog):
    slot = SLOT
    clock(DEADLINE)  # within the timeout, at the deadline
    land(s3, slot, "SOL/USDT")

    assert sensor().execute(context(slot)) is None
    assert "going on without ['ETH/USDT', 'BTC/USDT'] (no record yet: late)" in caplog.text


def test_a_deferral_that_times_out_at_the_deadline_is_one_more_look_not_a_failure(s3, clock):
    slot = SLOT
    clock(DEADLINE + 1)
    land(s3, slot, "BTC/USDT")
    timed_out = {"error": "Trigger timeout"}

    assert sensor().resume_execution("__fail__", timed_out, context(slot)) is None


def test_with_no_record_at_all_it_waits_for_any_record_until_the_timeout_then_the_feed_is_stale(s3, clock):
    from airflow.sdk.exceptions import AirflowSensorTimeout

    slot = SLOT
    wait = deferred(lambda: sensor().execute(context(slot)))

    assert wait.trigger.bucket_key == layout.ingestion_window_prefix(slot) + "*"
    assert wait.timeout == timedelta(seconds=TIMEOUT - 10)  # past the deadline too: no pair to go on with

    clock(TIMEOUT)
    with pytest.raises(AirflowSensorTimeout, match=f"no record of any pair for window {layout.slot_stamp(slot)}"):
        sensor().resume_execution("__fail__", {"error": "Trigger timeout"}, context(slot))


def test_once_one_record_is_there_it_waits_for_all_the_missing_ones_together(s3):
    slot = SLOT
    land(s3, slot, "ETH/USDT")
    first = deferred(lambda: sensor().execute(context(slot)))
    land(s3, slot, "BTC/USDT")  # a wake-up: one more there

    wait = deferred(lambda: sensor().resume(context(slot), {"status": "running"}, first.kwargs["missing_before"]))

    assert wait.trigger.bucket_key == [layout.record_glob(slot, "SOL/USDT")]
    land(s3, slot, "SOL/USDT")
    assert sensor().resume(context(slot), {"status": "success"}, wait.kwargs["missing_before"]) is None


def test_a_wake_up_by_a_key_outside_the_grammar_looks_again_later_not_in_a_loop(s3, clock):
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger

    slot = SLOT
    land(s3, slot, "ETH/USDT", "SOL/USDT")
    first = deferred(lambda: sensor().execute(context(slot)))
    s3.put_object(Bucket=BUCKET, Key=layout.ingestion_window_prefix(slot) + "/BTC_USDTX.json")  # matches BTC_USDT*

    wait = deferred(lambda: sensor().resume(context(slot), {"status": "success"}, first.kwargs["missing_before"]))

    assert isinstance(wait.trigger, DateTimeTrigger)
    assert wait.trigger.moment == clock(10) + SLOW_LOOK


@pytest.mark.parametrize("there", [("BTC/USDT",), ()])
def test_a_backfill_run_looks_once_and_goes_on_with_any_pair_or_is_skipped_naming_the_window(s3, there):
    from airflow.sdk.exceptions import AirflowSkipException

    slot = SLOT  # even a window that just ended: a backfill run never waits
    land(s3, slot, *there)

    if there:
        assert sensor().execute(context(slot, "backfill")) is None
        return
    with pytest.raises(AirflowSkipException) as skipped:
        sensor().execute(context(slot, "backfill"))
    assert str(skipped.value) == (
        f"no record for window {layout.slot_stamp(slot)}: nothing matches s3://{BUCKET}/"
        f"{layout.ingestion_window_prefix(slot)}* for a pair of the rules (a backfill run: looked once)"
    )


def test_without_a_triggerer_it_pokes_with_the_same_rule(s3, clock):
    land(s3, SLOT, "SOL/USDT")
    assert sensor(deferrable=False).poke(context(SLOT)) is False
    clock(DEADLINE)
    assert sensor(deferrable=False).poke(context(SLOT)) is True


def test_a_producers_legacy_alias_counts_as_the_default_pairs_record(s3):
    """Every pair's record is ``<slot>/<SLUG>...``; a producer's ``<slot><ext>`` still is the default pair's."""
    s3.put_object(Bucket=BUCKET, Key=layout.legacy_ingestion_key(SLOT, ".json"))
    land(s3, SLOT, "BTC/USDT", "SOL/USDT")

    assert sensor().execute(context(SLOT)) is None  # every pair there: done, nobody waited for

"""End to end: the bulk ``price_history_backfill`` DAG over a day of mixed-format records on the local
AWS stand-in, with ``dag.test()``, compared byte for byte with ``price_notification``'s runs.

The module's tests share one day (2025-03-11, no other test writes March 2025) and run in order: the
bulk run, the live runs of a few of its windows, a re-run over a notified window, a notifying run.
"""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from include.price_pipeline import analysis, layout, ledger
from local.feed import synthetic_record, write_record
from local.soak import default_entry
from tests.conftest import utc

pytestmark = pytest.mark.e2e

DAY = utc(2025, 3, 11)
NEXT_DAY = utc(2025, 3, 12)
GAPS = (utc(2025, 3, 11, 6, 0), utc(2025, 3, 11, 6, 5))
BAD_SLOT = utc(2025, 3, 11, 10, 0)
BAD_KEY = layout.ingestion_key(BAD_SLOT, ".json", pair="ETH/USDT")
DEFAULT_PARAMS = {
    "notify_on_backfill": False,
    "threshold_pct": 1.0,
    "lookback_minutes": 60,
    "min_abs_move": 0.0,
    "repeat_windows": 0,
}


@pytest.fixture(scope="module")
def bulk_dag(airflow_db):
    from dags.price_history_backfill import price_history_backfill

    return price_history_backfill()


@pytest.fixture(scope="module")
def live_dag(airflow_db):
    from dags.price_notification import price_notification

    return price_notification()


@pytest.fixture(scope="module")
def day_of_records(aws_session):
    """Every window of DAY in rotating formats, but two gaps and one malformed object."""
    for slot in layout.slots_between(DAY, NEXT_DAY):
        if slot not in GAPS and slot != BAD_SLOT:
            write_record(aws_session.s3, aws_session.config.bucket, synthetic_record(slot), pair="ETH/USDT")
    aws_session.put(BAD_KEY, b'{"date": %d, "weightedAverage": "NaN"}' % BAD_SLOT.timestamp())
    return aws_session


def run_bulk(dag, start, end, **params):
    """Run the bulk DAG over ``[start, end)``; return (DagRun, summary). Every param is passed explicitly:
    in-process runs share ``dag.params``."""
    run = dag.test(run_conf={**DEFAULT_PARAMS, "start": iso(start), "end": iso(end), **params})
    return run, xcom_summary(run)


def xcom_summary(run) -> dict | None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(
            run_id=run.run_id, dag_ids=run.dag_id, task_ids="analyse_price_history", key="return_value"
        )
        row = session.scalars(query).first()
        return None if row is None else XComModel.deserialize_value(row)


def iso(moment) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def task_states(run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


def day_objects(aws) -> dict[str, bytes]:
    """Every object the bulk DAG writes for DAY: canonical CSVs, ledger, quarantine, March's Parquet."""
    day = layout.partition(DAY)
    prefixes = [layout.ANALYSIS_PREFIX + day, layout.CHANGES_PREFIX + day, layout.QUARANTINE_PREFIX + day]
    objects = {k: v for prefix in prefixes for k, v in aws.snapshot(prefix).items()}
    objects[layout.parquet_key(2025, 3, pair="ETH/USDT")] = aws.get(layout.parquet_key(2025, 3, pair="ETH/USDT"))
    return objects


@pytest.fixture(scope="module")
def first_run(bulk_dag, day_of_records):
    run, summary = run_bulk(bulk_dag, DAY, NEXT_DAY)
    return run, summary, day_objects(day_of_records)


def test_both_dags_define_the_glue_job_identically(bulk_dag, live_dag):
    bulk, live = bulk_dag.get_task("normalize_price_history"), live_dag.get_task("normalize_price_record")

    for attribute in (
        "job_name",
        "job_desc",
        "script_location",
        "s3_bucket",
        "iam_role_name",
        "num_of_dpus",
        "concurrent_run_limit",
        "create_job_kwargs",
        "replace_script_file",
        "aws_conn_id",
    ):
        assert getattr(bulk, attribute) == getattr(live, attribute), attribute
    assert {k: v for k, v in bulk.script_args.items() if not k.startswith("--window")} == {
        k: v for k, v in live.script_args.items() if not k.startswith("--window")
    }


def test_one_run_normalizes_and_analyses_the_whole_day_and_counts_what_is_missing(first_run, day_of_records):
    aws = day_of_records
    run, summary, objects = first_run

    assert run.state == "success", task_states(run)
    assert summary["windows"] == 288
    assert summary["windows_seen"] == 285
    assert summary["missing"] == 3
    assert summary["missing_windows"] == [iso(GAPS[0]), iso(GAPS[1]), iso(BAD_SLOT)]
    assert summary["quarantined"] == 1
    assert summary["breaches"] > 0
    assert summary["ledger"]["written"] == 285
    assert summary["decisions"]["no_previous_record"] == 1  # 00:00; the gaps are shorter than the lookback
    assert len([k for k in objects if k.startswith(layout.CHANGES_PREFIX)]) == 285
    assert len([k for k in objects if k.startswith(layout.ANALYSIS_PREFIX)]) == 285
    [reason_key] = [k for k in objects if k.endswith(".reason.json")]
    assert reason_key.startswith(layout.quarantine_window_prefix(BAD_SLOT))
    assert "not finite" in json.loads(objects[reason_key])["reason"]
    assert aws.get(BAD_KEY).startswith(b'{"date"'), "the original stays"


def test_the_month_parquet_holds_every_canonical_csv_of_march(first_run, day_of_records):
    aws = day_of_records
    _, summary, objects = first_run
    march_csvs = aws.keys(layout.month_analysis_prefix(2025, 3))

    frame = pd.read_parquet(io.BytesIO(objects[layout.parquet_key(2025, 3, pair="ETH/USDT")]))

    assert summary["parquet"][0]["rows"] == len(frame) == len(march_csvs) >= 285
    assert tuple(frame.columns) == layout.CANONICAL_COLUMNS
    assert str(frame["timestamp"].dtype) == "datetime64[us, UTC]"
    assert frame["timestamp"].is_monotonic_increasing
    assert frame["weighted_average"].dtype == "float64"
    assert set(frame["source_format"]) == {"json", "csv", "xml", "text-kv"}


def test_ledger_entries_are_byte_identical_to_what_price_notification_writes(first_run, live_dag, aws, monkeypatch):
    """dag.test() only makes manual runs; the DAG hands dag_run.run_type to due_for_subscribers, so
    patching the run type to "backfill" there gives exactly a native backfill run of the window."""
    _, _, objects = first_run
    entries = {k: default_entry(v) for k, v in objects.items() if k.startswith(layout.CHANGES_PREFIX)}
    breach = min(k for k, v in entries.items() if v["decision"] == "suppressed_backfill")
    after_bad = layout.pairs_ledger_key(BAD_SLOT + layout.SLOT)
    compared = [layout.pairs_ledger_key(DAY), after_bad, breach]
    real_due = analysis.due_for_subscribers
    monkeypatch.setattr(analysis, "due_for_subscribers", lambda _run_type, *rest: real_due("backfill", *rest))

    for key in compared:
        aws.s3.delete_object(Bucket=aws.config.bucket, Key=key)
        slot = layout.slot_of_key(key)
        run = live_dag.test(logical_date=slot + layout.SLOT, run_conf=DEFAULT_PARAMS)
        assert run.state == "success", task_states(run)

    assert [aws.get(key) for key in compared] == [objects[key] for key in compared]
    assert entries[breach]["reason"] == "backfill run (notify_on_backfill is off)"
    assert entries[after_bad]["previous"]["timestamp"] == "2025-03-11T09:55:00Z"
    assert aws.alerts() == []


def test_a_rerun_writes_identical_objects_and_leaves_a_notified_window_untouched(first_run, bulk_dag, day_of_records):
    aws = day_of_records
    _, _, before = first_run
    breach_key = min(k for k, v in before.items() if k.startswith(layout.CHANGES_PREFIX) and b"suppressed_b" in v)
    [(pair, entry)] = ledger.parse_entries(before[breach_key]).items()
    [(rule, state)] = entry["rules"].items()
    state = state | {"decision": "notified", "sns_message_id": "message-from-live-run"}
    entry = entry | {"decision": "notified", "rules": {rule: state}}  # as a live run of the window left it
    aws.put(breach_key, ledger.entries_bytes({pair: entry}))
    expected = {**before, breach_key: aws.get(breach_key)}

    run, summary = run_bulk(bulk_dag, DAY, NEXT_DAY)

    assert run.state == "success", task_states(run)
    assert day_objects(aws) == expected
    assert ledger.parse_entries(aws.get(breach_key))[pair] == entry
    assert summary["ledger"] == {"written": 0, "unchanged": 285, "due": 0}
    assert summary["parquet"][0]["written"] is False


def test_notify_on_backfill_publishes_each_due_breach_once_and_skips_the_notified_window(first_run, bulk_dag, aws):
    _, _, before = first_run
    ledger_keys = sorted(k for k in before if k.startswith(layout.CHANGES_PREFIX))
    [notified_key] = [k for k in ledger_keys if b'"notified"' in aws.get(k)]
    notified_entry = aws.get(notified_key)
    fresh = [k for k in ledger_keys if k > notified_key and b"suppressed_backfill" in before[k]][:3]
    start, end = layout.slot_of_key(notified_key), layout.slot_of_key(fresh[-1]) + layout.SLOT

    run, summary = run_bulk(bulk_dag, start, end, notify_on_backfill=True)

    assert run.state == "success", task_states(run)
    alerts = aws.alerts()
    assert summary["notified"] == len(alerts) == len(fresh) == 3
    assert aws.get(notified_key) == notified_entry
    entries = [default_entry(aws.get(key)) for key in fresh]
    assert {e["decision"] for e in entries} == {"notified"}
    assert {e["sns_message_id"] for e in entries} == {a["MessageId"] for a in alerts}
    for alert in alerts:
        assert alert["Subject"].startswith("ETH/USDT ")
        assert "/dags/price_history_backfill/runs/" in alert["Message"]


def test_a_range_where_every_record_was_quarantined_fails_with_the_counts_and_tells_ops(bulk_dag, aws):
    first = utc(2025, 4, 2, 10, 0)
    for n in range(3):
        slot = first + n * layout.SLOT
        aws.put(
            layout.ingestion_key(slot, ".json", pair="ETH/USDT"),
            b'{"date": %d, "weightedAverage": "NaN"}' % slot.timestamp(),
        )

    run, summary = run_bulk(bulk_dag, first, first + 3 * layout.SLOT)

    assert run.state == "failed"
    assert task_states(run)["analyse_price_history"] == "failed"
    assert summary is None
    [ops] = aws.ops()
    assert (
        "Reason: no usable window from 2025-04-02T10:00:00Z to 2025-04-02T10:15:00Z: 3 windows, "
        "3 without a canonical record, 3 quarantined objects"
    ) in ops["Message"]


def test_a_mostly_quarantined_range_succeeds_and_tells_ops_once_with_the_counts_and_commonest_reasons(
    bulk_dag, aws, poloniex_rows
):
    """Real Poloniex candles as an OHLC feed sends them (no weighted average, no quote volume): only the
    no-trade candles are usable. The run succeeds on those and ops hear of the rest, once."""
    first = utc(2025, 4, 3, 10, 0)
    candles = poloniex_rows[5655:5667]  # 8 trades, 2 no-trade candles, 2 trades (2017-08-03)
    for n, row in enumerate(candles):
        slot = first + n * layout.SLOT
        record = {"date": int(slot.timestamp()), **{f: row[f] for f in ("open", "high", "low", "close", "volume")}}
        aws.put(layout.ingestion_key(slot, ".json", pair="ETH/USDT"), json.dumps(record))
    nan_slot = first + len(candles) * layout.SLOT
    nan_key = layout.ingestion_key(nan_slot, ".json", pair="ETH/USDT")
    aws.put(nan_key, b'{"date": %d, "weightedAverage": "NaN"}' % nan_slot.timestamp())
    end = nan_slot + layout.SLOT

    run, summary = run_bulk(bulk_dag, first, end)

    assert run.state == "success", task_states(run)
    assert (summary["windows"], summary["windows_seen"], summary["quarantined"]) == (13, 2, 11)
    [ops] = aws.ops()
    assert (
        ops["Subject"] == "[price pipeline] Quarantined in range 2025-04-03T10:00Z..2025-04-03T11:05Z: 11 of 13 objects"
    )
    message = ops["Message"]
    assert "quarantined 11 of 13 objects of the range: " in message
    assert "ETH/USDT: 2 of 13 windows have a usable record" in message
    wa_line = next(line for line in message.splitlines() if "no weighted_average" in line)
    assert wa_line.startswith('- 10 objects: "no weighted_average, and no volume and quote_volume to derive it"')
    nan_line = next(line for line in message.splitlines() if "is not finite" in line)
    assert nan_line.startswith("- 1 object: ")
    assert message.index(wa_line) < message.index(nan_line), "commonest first"
    assert f'e.g. "{nan_key}"' in message
    assert "/dags/price_history_backfill/runs/" in message

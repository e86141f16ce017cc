"""End to end: a cooldown decides the same in every lane. Four hours of real Poloniex candles for three
pairs (a 5-minute change with ``repeat_windows``, a 15-minute change with ``cooldown_minutes``, a crossing
with ``cooldown_minutes``) on the stand-in: the bulk DAG decides the whole range, then price_notification
decides again, for each rule, its first alert that came while a run of firings went on and the cooled
firing before it: as native backfill runs (byte for byte the bulk's entries) and as live runs (the same
decisions, counted from the same alert window, and a message for exactly the alerting rules).

The range holds runs of firings longer than a cooldown: under the old rule (a cooldown counted from the
last firing) they alerted once; now they alert again once a cooldown has passed since their last alert.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from include.price_pipeline import analysis, layout, ledger, rules
from local.feed import write_record
from tests.conftest import ROOT, utc
from tests.e2e.test_price_history_backfill import iso, task_states, xcom_summary
from tests.records import candle

pytestmark = pytest.mark.e2e

T0 = utc(2023, 5, 17, 8, 0)  # a day no other test uses
WINDOWS = 48
END = T0 + layout.SLOT * WINDOWS
FIRST_ROW = 1356  # real candles of 2017-07-18 19:40-23:40: runs of firings of every rule below
SCALE = {"ETH/USDT": 30_000.0, "BTC/USDT": 1_000_000.0, "SOL/USDT": 1_500.0}
LEVEL = 150.8  # SOL/USDT's crossing level: the real price crosses it back and forth
RULES = {
    "default_pair": "ETH/USDT",
    "pairs": {
        "ETH/USDT": [{"name": "move-5m", "kind": "change", "threshold_pct": 0.4, "minutes": 5,
                      "tolerance_minutes": 55}],
        "BTC/USDT": [{"name": "move-15m", "kind": "change", "threshold_pct": 0.8, "minutes": 15,
                      "tolerance_minutes": 10, "cooldown_minutes": 15}],
        "SOL/USDT": [{"name": "cross", "kind": "crossing", "level": LEVEL, "tolerance_minutes": 55,
                      "cooldown_minutes": 30}],
    },
}  # fmt: skip
PARAMS = {
    "notify_on_backfill": False,
    "threshold_pct": 0.4,
    "lookback_minutes": 60,
    "min_abs_move": 0.0,
    "repeat_windows": 3,  # the default pair's 15-minute cooldown
}
ALERTING = {analysis.NOTIFY, analysis.PUBLISHING, analysis.NOTIFIED, analysis.SUPPRESSED_BACKFILL}
COOLED = {rules.SUPPRESSED_COOLDOWN}


@pytest.fixture(scope="module")
def settings_env(tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "cooldowns.json"
    path.write_text(json.dumps(RULES))
    return {"PRICE_RULES_FILE": str(path)}


def parse(name: str, module: str, env: dict):
    import importlib.util

    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        spec = importlib.util.spec_from_file_location(name, ROOT / "dags" / f"{module}.py")
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        return getattr(loaded, module)()


@pytest.fixture(scope="module")
def records(aws_session, poloniex_rows):
    """Every pair's raw record of every window, as producers write them (the default pair's under its key)."""
    real = [float(row["weightedAverage"]) for row in poloniex_rows[FIRST_ROW : FIRST_ROW + WINDOWS]]
    for slot, price in zip(layout.slots_between(T0, END), real, strict=True):
        write_record(
            aws_session.s3,
            aws_session.config.bucket,
            candle(slot, round(price * SCALE["ETH/USDT"], 8)),
            pair="ETH/USDT",
        )
        for pair in ("BTC/USDT", "SOL/USDT"):
            record = candle(slot, round(price * SCALE[pair], 8))
            aws_session.put(layout.ingestion_key(slot, ".json", pair=pair), json.dumps(record))
    return aws_session


@pytest.fixture(scope="module")
def bulk(records, settings_env, airflow_db):
    """The bulk DAG over the range; the ledger objects it wrote, by window."""
    dag = parse("price_history_backfill_cooldowns", "price_history_backfill", settings_env)
    run = dag.test(run_conf={**PARAMS, "start": iso(T0), "end": iso(END)})
    assert run.state == "success", task_states(run)
    assert xcom_summary(run)["windows_seen"] == WINDOWS
    return {slot: ledger_objects(records, slot) for slot in layout.slots_between(T0, END)}


@pytest.fixture(scope="module")
def live_dag(settings_env, airflow_db):
    """price_notification with every window of the range still young enough to alert."""
    return parse("price_notification_cooldowns", "price_notification", {
        **settings_env, "PRICE_MAX_ALERT_AGE_MINUTES": str(10 * 365 * 24 * 60)})  # fmt: skip


def ledger_objects(aws, slot) -> bytes:
    return aws.get(layout.pairs_ledger_key(slot))


COOLDOWN = {("ETH/USDT", "move-5m"): 15, ("BTC/USDT", "move-15m"): 15, ("SOL/USDT", "cross"): 30}


def verdicts(objects: bytes) -> dict[tuple[str, str], tuple[str, str, str | None]]:
    """``{(pair, rule): (alert | cooled | the decision, direction, the alert window a cooled firing counts
    from)}`` of a window's ledger object."""
    found = {}
    for pair, entry in ledger.parse_entries(objects).items():
        for name, rule in entry["rules"].items():
            found[pair, name] = (rule["decision"], rule["direction"], rule.get("suppressed_by"))
    kind = {**dict.fromkeys(ALERTING, "alert"), **dict.fromkeys(COOLED, "cooled")}
    return {key: (kind.get(decision, decision), direction, by) for key, (decision, direction, by) in found.items()}


def alerts_again_within_a_run(bulk) -> dict[tuple[str, str], tuple]:
    """Each rule's first alert that came while its run of firings went on (a same-direction firing, cooled,
    within the cooldown before it: the old rule suppressed such an alert) and that cooled firing's window."""
    decided = {slot: verdicts(objects) for slot, objects in bulk.items()}
    out = {}
    for slot, found in decided.items():
        for key, (kind, direction, _) in found.items():
            earlier = layout.slots_between(max(T0, slot - timedelta(minutes=COOLDOWN[key])), slot)
            cooled = [s for s in earlier if decided[s][key][:2] == ("cooled", direction)]
            if kind == "alert" and cooled and key not in out:
                out[key] = (slot, cooled[-1])
    return out


def test_live_native_backfill_and_bulk_runs_reach_the_same_cooldown_decisions(bulk, live_dag, aws, monkeypatch):
    again = alerts_again_within_a_run(bulk)
    assert set(again) == set(COOLDOWN), again
    windows = sorted({slot for pair in again.values() for slot in pair})
    real_due = analysis.due_for_subscribers

    for slot in windows:  # native backfill runs: price_notification's backfill lane, byte for byte
        aws.s3.delete_object(Bucket=aws.config.bucket, Key=layout.pairs_ledger_key(slot))
        with monkeypatch.context() as patch:
            patch.setattr(analysis, "due_for_subscribers", lambda _type, *rest: real_due("backfill", *rest))
            run = live_dag.test(logical_date=slot + layout.SLOT, run_conf=PARAMS)
        assert run.state == "success", task_states(run)
        assert ledger_objects(aws, slot) == bulk[slot], iso(slot)
    assert aws.alerts() == []

    for slot in windows:  # live runs: they alert
        aws.s3.delete_object(Bucket=aws.config.bucket, Key=layout.pairs_ledger_key(slot))
        run = live_dag.test(logical_date=slot + layout.SLOT, run_conf=PARAMS)
        assert run.state == "success", task_states(run)
        live = verdicts(ledger_objects(aws, slot))
        assert live == verdicts(bulk[slot]), iso(slot)
        sent = sorted(alert["MessageAttributes"]["symbol"]["Value"] for alert in aws.alerts())
        assert sent == sorted(pair for (pair, _), (kind, *_) in live.items() if kind == "alert"), iso(slot)

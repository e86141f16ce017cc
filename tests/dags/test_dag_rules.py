"""The rules file is validated when the DAGs are parsed: a mistake fails the parse with one line naming
the pair, the rule and the field; every pair, one or many, is analysed by the notification DAG's one
analysis task."""

from __future__ import annotations

import importlib.util
import json

import pytest

from include.price_pipeline import rules
from tests.conftest import ROOT


def parse(monkeypatch, dag_file: str, rules_file) -> object:
    monkeypatch.setenv("PRICE_RULES_FILE", str(rules_file))
    spec = importlib.util.spec_from_file_location(f"{dag_file}_rules_test", ROOT / "dags" / f"{dag_file}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dag_file", ["price_notification", "price_history_backfill"])
def test_a_bad_rules_file_fails_the_parse_with_one_line(monkeypatch, tmp_path, dag_file):
    document = json.loads((ROOT / "include" / "rules" / "local.json").read_text())
    document["pairs"]["BTC/USDT"][0]["minutes"] = 7
    bad = tmp_path / "rules.json"
    bad.write_text(json.dumps(document))

    with pytest.raises(rules.RulesError) as refused:
        parse(monkeypatch, dag_file, bad)

    assert str(refused.value) == (
        f"rules file {bad}: pair BTC/USDT, rule move-15m: minutes must be a multiple of 5 from 5 to 1440 (got 7)"
    )


def test_one_analysis_task_decides_every_pair_and_the_one_publish_task_sends_its_alerts(monkeypatch):
    """Other pairs add no task: analyse_pairs exists with the default pair alone and with many pairs."""
    dag = parse(monkeypatch, "price_notification", "include/rules/local.json").price_notification()
    default = parse(monkeypatch, "price_notification", "include/rules/default.json").price_notification()

    assert dag.get_task("wait_for_price_record").pairs == ["ETH/USDT", "BTC/USDT", "SOL/USDT"]
    assert default.get_task("wait_for_price_record").pairs == ["ETH/USDT"]
    for each in (dag, default):
        analyse, publish = each.get_task("analyse_pairs"), each.get_task("publish_price_alerts")
        assert analyse.upstream_task_ids == {"normalize_price_record"}
        assert publish.upstream_task_ids == {"analyse_pairs"}
    assert set(dag.task_ids) == set(default.task_ids)


def test_the_run_of_an_earlier_window_is_found_at_its_scheduled_logical_date_the_windows_end():
    """A scheduled or backfill run of [slot, slot + 5 min) has the logical date slot + 5 min (its run id
    says backfill__<end>): asking for runs at the window's start alone found the next window's run."""
    from datetime import UTC, datetime

    from include.price_pipeline import layout, runs

    slot = datetime(2017, 7, 18, 10, 0, tzinfo=UTC)
    normalizing = {slot + layout.SLOT: {"backfill__2017-07-18T10:05:00+00:00": {runs.NORMALIZE_TASK: "deferred"}}}

    class Ti:
        def get_task_states(self, dag_id, task_ids, logical_dates):
            return {run: tasks for date in logical_dates for run, tasks in normalizing.get(date, {}).items()}

        def get_dagrun_state(self, dag_id, run_id):
            return "running"

    assert runs.still_normalizing(Ti(), "price_notification")([slot]) == [slot]

"""A subscriptions file is checked as Terraform's ``alert_subscriptions`` variable is (tests/infra checks
that side): a protocol SNS offers here, an endpoint, a filter policy on the alert's attribute names only."""

from __future__ import annotations

import json

import pytest

from local import subscriptions


def test_make_runs_example_has_three_subscribers_with_filters_on_alert_attributes():
    example = subscriptions.load(subscriptions.EXAMPLE)

    assert [subscriptions.label(s) for s in example] == [
        "sms +15555550100",
        "email alerts@example.com",
        "https https://hooks.example.com/price-alerts",
    ]
    assert [sorted(s["filter_policy"]) for s in example] == [["pair"], ["pair"], ["change_pct"]]


@pytest.mark.parametrize(
    ("subscription", "problem"),
    [
        ({"protocol": "http", "endpoint": "http://x"}, "protocol must be one of email, sms, https, sqs, lambda"),
        ({"protocol": "email", "endpoint": " "}, "endpoint must be a non-empty string"),
        ({"protocol": "email"}, "endpoint must be a non-empty string"),
        ({"protocol": "email", "endpoint": "a@b", "filter_policy": {"severity": ["high"]}}, "names 'severity'"),
        ({"protocol": "email", "endpoint": "a@b", "filter_policy": {"pair": "BTC/USDT"}}, "non-empty lists"),
        ({"protocol": "email", "endpoint": "a@b", "filter": {"pair": ["BTC/USDT"]}}, "protocol, endpoint and"),
        ({"protocol": "sms", "endpoint": "+15555550100", "filter_policy": {"rule": ["x"]}}, "one subscription per"),
    ],
)
def test_a_subscription_sns_would_refuse_or_that_filters_on_no_attribute_is_refused(tmp_path, subscription, problem):
    path = tmp_path / "subscriptions.json"
    path.write_text(json.dumps([{"protocol": "sms", "endpoint": "+15555550100"}, subscription]))

    with pytest.raises(ValueError, match="subscription 2: .*" + problem):
        subscriptions.load(path)


def test_a_subscription_without_a_filter_policy_gets_every_alert_and_a_file_is_a_list(tmp_path):
    path = tmp_path / "subscriptions.json"
    path.write_text(json.dumps([{"protocol": "email", "endpoint": "all@example.com"}]))
    assert subscriptions.load(path) == [{"protocol": "email", "endpoint": "all@example.com"}]

    path.write_text(json.dumps({"protocol": "email", "endpoint": "all@example.com"}))
    with pytest.raises(ValueError, match="a list of subscriptions"):
        subscriptions.load(path)


@pytest.mark.parametrize(
    ("setting", "standin_args"),
    [
        (None, ("--subscriptions", str(subscriptions.EXAMPLE))),
        ("", ()),
        ("other.json", ("--subscriptions", "other.json")),
    ],
)
def test_make_run_hands_its_subscriptions_file_to_the_stand_in(tmp_path, monkeypatch, setting, standin_args):
    from local import run

    class Started(Exception):
        pass

    def stack(**kwargs):
        assert kwargs["standin_args"] == standin_args
        raise Started

    monkeypatch.chdir(tmp_path)
    (tmp_path / "other.json").write_text("[]")
    monkeypatch.setattr(run, "Stack", stack)
    monkeypatch.delenv("STANDIN_FAULTS", raising=False)
    if setting is not None:
        monkeypatch.setenv("ALERT_SUBSCRIPTIONS_FILE", setting)
    else:
        monkeypatch.delenv("ALERT_SUBSCRIPTIONS_FILE", raising=False)

    with pytest.raises(Started):
        run.main()


def test_make_run_refuses_a_wrong_subscriptions_file_before_starting_anything(tmp_path, monkeypatch, capsys):
    from local import run

    (tmp_path / "wrong.json").write_text(json.dumps([{"protocol": "fax", "endpoint": "+15555550100"}]))
    monkeypatch.setenv("ALERT_SUBSCRIPTIONS_FILE", str(tmp_path / "wrong.json"))
    monkeypatch.setattr(run, "Stack", lambda **kwargs: pytest.fail("started a stack"))

    assert run.main() == 2
    assert "subscription 1: protocol must be one of" in capsys.readouterr().out

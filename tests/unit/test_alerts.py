"""Ledger entries (``ledger.pair_entry``, ``alerts.ledger_bytes``), the one alert builder (``alerts.alert``:
subject, message, attributes), run links and the ops notification templates."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from urllib.parse import unquote, urlsplit

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.sandbox import SandboxedEnvironment

from include.price_pipeline import alerts, analysis, incidents, layout, ledger, rules, windows
from include.price_pipeline import settings as price_settings
from include.price_pipeline.analysis import Price
from tests.conftest import utc

SLOT = utc(2026, 2, 3, 12, 0)
PAIR = "ETH/USDT"
RUN_URL = "http://127.0.0.1:8080/dags/price_notification/runs/manual__2026-02-03T12%3A05%3A00%2B00%3A00"


MOVE_5M = rules.Rule("move-5m", rules.CHANGE, threshold_pct=1.5, tolerance_minutes=24 * 60 - 5)
CONFIG = price_settings.load({})
NOT_DUE = "backfill run (notify_on_backfill is off)"


def entry_for(
    previous: float | None,
    latest: float,
    pair: str = PAIR,
    gap_windows: int = 1,
    rule: rules.Rule | None = None,
    due: bool = True,
    record_pair: str | None = None,
) -> dict:
    """The ledger entry of ``pair``'s window at SLOT, built the way analyse_pairs builds every pair's
    (``ledger.pair_entry`` of ``rules.evaluate``); ``record_pair``: the pair text the record itself carries."""
    rule = rule or MOVE_5M
    prices = [Price(SLOT, latest, record_pair or pair, layout.ingestion_key(SLOT, ".json", pair="ETH/USDT"))]
    if previous is not None:
        earlier = SLOT - layout.SLOT * gap_windows
        prices.append(
            Price(earlier, previous, record_pair or pair, layout.ingestion_key(earlier, ".csv", pair="ETH/USDT"))
        )
    series = rules.Series(prices)
    decided = {rule.name: rules.evaluate(rule, series, SLOT)}
    return ledger.pair_entry(pair, SLOT, series.at(SLOT), (rule,), decided, due, NOT_DUE)


def alert_of(entry: dict, rule: str = "move-5m") -> dict:
    """The alert of the entry's ``rule`` whatever it decided: ``alerts.alert`` of the view ``ledger.due_alerts``
    builds (the rule's state with the entry's latest price and window; pinned by the test below)."""
    window = {field: entry[field] for field in ("latest", "window_start", "window_end")}
    return alerts.alert(entry["pair"], rule, entry["rules"][rule] | window, RUN_URL)


def published(entry: dict) -> dict:
    """The one alert the publish task gets of the entry (``ledger.due_alerts``)."""
    [alert] = ledger.due_alerts(entry, RUN_URL)
    return alert


# ------------------------------------------------------------------ ledger


def test_ledger_entry_is_the_same_for_equal_inputs_and_serializes_to_identical_bytes():
    first, second = entry_for(3047.12, 3120.55), entry_for(3047.12, 3120.55)

    assert first == second
    assert alerts.ledger_bytes(first) == alerts.ledger_bytes(second)


def test_ledger_bytes_are_sorted_json_with_a_trailing_newline_that_reads_back_to_the_entry():
    entry = entry_for(3047.12, 3120.55)

    body = alerts.ledger_bytes(entry)

    assert body.endswith(b"}\n")
    assert body.count(b"\n") == 1  # one object per line, as Athena's JSON SerDe reads the ledger
    assert json.loads(body) == entry
    assert list(json.loads(body)) == sorted(entry)
    assert list(json.loads(body)["rules"]["move-5m"]) == sorted(entry["rules"]["move-5m"])


def test_ledger_bytes_differ_when_the_decision_differs():
    notify = entry_for(100.0, 103.0, due=True)
    suppressed = entry_for(100.0, 103.0, due=False)

    assert notify["rules"]["move-5m"]["decision"] == analysis.NOTIFY
    assert (suppressed["rules"]["move-5m"]["decision"], suppressed["rules"]["move-5m"]["reason"]) == (
        analysis.SUPPRESSED_BACKFILL,
        NOT_DUE,
    )
    assert alerts.ledger_bytes(notify) != alerts.ledger_bytes(suppressed)


def test_ledger_entry_records_the_window_prices_change_and_rule():
    rule = rules.Rule("move-5m", rules.CHANGE, threshold_pct=1.5, tolerance_minutes=25, min_abs_move=2.0,
                      cooldown_minutes=15)  # fmt: skip

    entry = entry_for(100.0, 103.0, rule=rule)

    assert entry["pair"] == PAIR
    assert entry["window_start"] == "2026-02-03T12:00:00Z"
    assert entry["window_end"] == "2026-02-03T12:05:00Z"
    assert entry["latest"] == {
        "timestamp": "2026-02-03T12:00:00Z",
        "weighted_average": 103.0,
        "source_key": layout.ingestion_key(SLOT, ".json", pair="ETH/USDT"),
    }
    assert entry["decision"] == ledger.PUBLISHING  # a rule is due: the caller claims it
    state = entry["rules"]["move-5m"]
    assert state["reference"]["timestamp"] == "2026-02-03T11:55:00Z"
    assert state["change_pct"] == pytest.approx(3.0)
    assert (state["kind"], state["direction"], state["decision"]) == (rules.CHANGE, "up", analysis.NOTIFY)
    assert (state["threshold_pct"], state["minutes"], state["level"]) == (1.5, 5, None)
    assert state["sns_message_id"] is None
    assert "suppressed_by" not in state


def test_ledger_entry_of_a_window_without_a_previous_record_serializes_with_nulls():
    entry = entry_for(None, 103.0)

    parsed = json.loads(alerts.ledger_bytes(entry))["rules"]["move-5m"]

    assert parsed["decision"] == analysis.NO_PREVIOUS
    assert parsed["reference"] is None
    assert parsed["change_pct"] is None
    assert parsed["direction"] == "flat"
    assert entry["decision"] == ledger.ANALYSED


def test_the_alert_of_a_due_rule_is_the_alert_of_its_view():
    """``alert_of`` builds the view as ``ledger.due_alerts`` does; a rule that is not due gets no alert."""
    entry = entry_for(3047.12, 3120.55)

    assert ledger.due_alerts(entry, RUN_URL) == [alert_of(entry)]
    assert ledger.due_alerts(entry_for(3047.12, 3050.0), RUN_URL) == []
    assert ledger.due_alerts(entry_for(3047.12, 3120.55, due=False), RUN_URL) == []


# ------------------------------------------------------------------ subject


def test_alert_subject_reads_like_the_documented_example():
    assert published(entry_for(3047.12, 3120.55))["subject"] == "ETH/USDT up 2.41% in 5 min: 3,120.55"


def test_alert_subject_of_a_fall_says_down_with_the_absolute_change():
    assert published(entry_for(3000.0, 2910.0))["subject"] == "ETH/USDT down 3.00% in 5 min: 2,910.00"


def test_alert_subject_counts_the_minutes_since_the_previous_record():
    assert published(entry_for(100.0, 103.0, gap_windows=3))["subject"].startswith("ETH/USDT up 3.00% in 15 min: ")


prices = st.floats(min_value=1e-8, max_value=1e12, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(previous=prices, latest=prices, record_pair=st.text(min_size=1, max_size=200))
def test_alert_subject_never_exceeds_the_sns_subject_limit(previous, latest, record_pair):
    entry = entry_for(previous, latest, record_pair=record_pair)

    assert len(alert_of(entry)["subject"]) <= 100


realistic_prices = st.floats(min_value=0.01, max_value=1e7)
short_pairs = st.text(
    st.characters(categories=("L", "N"), include_characters="/_-", max_codepoint=127), min_size=1, max_size=40
)


@settings(max_examples=200, deadline=None)
@given(previous=realistic_prices, ratio=st.floats(min_value=0.05, max_value=9.0), pair=short_pairs)
def test_alert_subject_of_a_realistic_alert_is_complete(previous, ratio, pair):
    latest = previous * ratio
    entry = entry_for(previous, latest, pair=pair)

    subject = alert_of(entry)["subject"]

    match = re.fullmatch(rf"{re.escape(pair)} (up|down|flat) (\d+\.\d\d)% in 5 min: (.+)", subject)
    assert match, subject
    assert match[1] == entry["rules"]["move-5m"]["direction"]
    assert float(match[2]) == pytest.approx(abs(latest - previous) / previous * 100, abs=0.005 + 1e-9)
    assert match[3] == alerts.format_price(latest)


# ------------------------------------------------------------------ message and attributes


def test_alert_message_holds_both_prices_and_times_the_change_threshold_window_and_run_link():
    message = published(entry_for(3047.12, 3120.55))["message"]

    assert "3,047.12" in message
    assert "3,120.55" in message
    assert "2026-02-03T11:55:00Z" in message
    assert "2026-02-03T12:00:00Z" in message
    assert "+2.41%" in message
    assert "(rule move-5m: |change| 2.4098% over 5 min > threshold 1.5%)" in message  # its reason names the threshold
    assert "2026-02-03T12:00:00Z to 2026-02-03T12:05:00Z" in message
    assert RUN_URL in message
    assert message.index("3,047.12") < message.index("3,120.55"), "previous comes before latest"


def test_alert_message_of_a_fall_shows_a_negative_change():
    assert "-3.00%" in published(entry_for(3000.0, 2910.0))["message"]


@pytest.mark.parametrize(("latest", "direction", "change"), [(3072.3, "up", 2.41), (2910.0, "down", -3.0)])
def test_alert_attributes_carry_pair_kind_direction_and_change_as_a_number(latest, direction, change):
    attributes = published(entry_for(3000.0, latest))["message_attributes"]

    assert attributes["pair"] == attributes["symbol"] == "ETH/USDT"  # symbol: pair's first name, still there
    assert attributes["kind"] == "change"
    assert attributes["direction"] == direction
    assert isinstance(attributes["change_pct"], float)
    assert attributes["change_pct"] == pytest.approx(change, abs=1e-4)
    assert attributes["rule"] == "move-5m"
    assert set(attributes) == set(alerts.ATTRIBUTES) == {"pair", "symbol", "rule", "kind", "direction", "change_pct"}


def test_a_crossing_alert_says_its_kind():
    cross = rules.Rule("cross-101", rules.CROSSING, level=101.0, direction="both", tolerance_minutes=55)

    attributes = published(entry_for(100.0, 103.0, rule=cross))["message_attributes"]

    assert attributes | {"change_pct": 0} == {"pair": PAIR, "symbol": PAIR, "rule": "cross-101", "kind": "crossing",
                                              "direction": "up", "change_pct": 0}  # fmt: skip


# ------------------------------------------------ no NaN or Infinity; record text never reaches people


def test_a_non_finite_change_is_stored_as_null_and_json_refuses_nan_and_infinity():
    infinite = entry_for(5e-324, 1e300)
    state = infinite["rules"]["move-5m"]

    body = alerts.ledger_bytes(infinite)

    assert state["decision"] == analysis.INVALID_CHANGE
    assert json.loads(body)["rules"]["move-5m"]["change_pct"] is None
    assert b"Infinity" not in body
    assert b"NaN" not in body
    with pytest.raises(ValueError, match="not JSON compliant"):
        alerts.ledger_bytes({**infinite, "rules": {"move-5m": {**state, "change_pct": float("inf")}}})
    with pytest.raises(ValueError, match="not JSON compliant"):
        alerts.ledger_bytes({**infinite, "rules": {"move-5m": {**state, "change_pct": float("nan")}}})


def test_alert_text_and_attributes_refuse_a_non_finite_change():
    entry = entry_for(100.0, 103.0)
    state = entry["rules"]["move-5m"]

    with pytest.raises(alerts.UnsafeText):
        alert_of({**entry, "rules": {"move-5m": {**state, "change_pct": float("inf")}}})
    crossing = {
        "kind": "crossing",
        "level": 100.0,
        "direction": "up",
        "change_pct": float("nan"),
        "reason": "r",
        "reference": state["reference"],
        "latest": entry["latest"],
        "window_start": "",
        "window_end": "",
    }
    with pytest.raises(alerts.UnsafeText):
        alerts.alert(PAIR, "cross", crossing, RUN_URL)


HOSTILE_PAIR = "<!channel> <https://x|LOGIN> \U0001f680 BTC/USDT\nSubject: x"


def test_alert_text_names_the_configured_pair_never_the_records_text():
    entry = entry_for(100.0, 103.0, record_pair=HOSTILE_PAIR)

    alert = published(entry)
    texts = [
        alert["subject"],
        alert["message"],
        json.dumps(alert["message_attributes"]),
        alerts.ledger_bytes(entry).decode(),
    ]

    assert texts[0] == "ETH/USDT up 3.00% in 5 min: 103.00"
    assert alert["message_attributes"]["symbol"] == PAIR
    assert not any(part in text for text in texts for part in ("channel", "LOGIN", "BTC", "\U0001f680"))


def test_slack_text_escapes_ampersand_and_angle_brackets_so_nothing_becomes_a_mention_or_a_link():
    text = alerts.slack_text("ETH <b> & co", "<!channel> <https://x|LOGIN> <@U123> a&b > c")

    assert text == "*ETH &lt;b&gt; &amp; co*\n&lt;!channel&gt; &lt;https://x|LOGIN&gt; &lt;@U123&gt; a&amp;b &gt; c"
    assert "<" not in text
    assert ">" not in text


@pytest.mark.parametrize(
    ("subject", "why"),
    [
        ("x" * 100, "1 to 99"),
        ("", "1 to 99"),
        ("ETH/USDT\nup", "printable ASCII"),
        ("ETH/USDT\rup", "printable ASCII"),
        ("ETH \u00e9 up", "printable ASCII"),
        ("ETH \U0001f680", "printable ASCII"),
        ("\tETH", "printable ASCII"),
        (" ETH up", "whitespace"),
    ],
)
def test_sns_subject_rules_are_checked_by_our_code(subject, why):
    with pytest.raises(alerts.UnsafeText, match=why):
        alerts.check_subject(subject)


def test_a_configured_pair_sns_would_refuse_fails_the_subject_instead_of_reaching_sns():
    with pytest.raises(alerts.UnsafeText):
        ledger.due_alerts(entry_for(100.0, 103.0, pair="ETH/\u00e9"), RUN_URL)


# ------------------------------------------------------------------ format_price and run_url


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3120.55, "3,120.55"),
        (1234567.891, "1,234,567.89"),
        (100.0, "100.00"),
        (99.5, "99.5000"),
        (1.0, "1.0000"),
        (0.00012345, "0.00012345"),
    ],
)
def test_format_price_examples(value, text):
    assert alerts.format_price(value) == text


@settings(max_examples=200, deadline=None)
@given(value=st.floats(min_value=1e-8, max_value=1e12))
def test_format_price_reads_back_to_the_price_within_its_last_digit(value):
    text = alerts.format_price(value)

    decimals = len(text.rsplit(".", 1)[1])
    assert decimals >= 2
    assert abs(float(text.replace(",", "")) - value) <= 0.5 * 10**-decimals + 1e-9 * value
    whole = text.split(".")[0]
    assert re.fullmatch(r"\d{1,3}(,\d{3})*", whole), text


@pytest.mark.parametrize(
    "run_id",
    ["scheduled__2026-01-05T10:05:00+00:00", "manual__2026-01-05T10:05:00.123456+00:00", "backfill/odd id+1"],
)
def test_run_url_quotes_the_run_id_into_one_path_segment(run_id):
    url = alerts.run_url("http://127.0.0.1:8080/", "price_notification", run_id)

    path = urlsplit(url).path
    assert url.startswith("http://127.0.0.1:8080/dags/price_notification/runs/")
    assert "//dags" not in url
    segment = path.rsplit("/", 1)[1]
    assert path == f"/dags/price_notification/runs/{segment}"
    assert unquote(segment) == run_id
    assert not {"+", ":", "/"} & set(segment)


def test_run_url_encodes_plus_and_colon_as_percent_escapes():
    url = alerts.run_url("http://airflow.example.com", "price_notification", "scheduled__2026-01-05T10:05:00+00:00")

    assert url.endswith("/runs/scheduled__2026-01-05T10%3A05%3A00%2B00%3A00")


# ------------------------------------------------------------------ ops notification templates


#: Airflow renders notifier fields in a sandbox that fails on undefined names.
JINJA = SandboxedEnvironment(undefined=jinja2.StrictUndefined)
DAG_TASK_IDS = (
    "wait_for_price_record",
    "normalize_price_record",
    "analyse_pairs",
    "publish_price_alerts",
)


def ops_context(task_id: str, exception: object) -> dict:
    start = utc(2026, 1, 7, 10, 0)
    return {
        "ti": SimpleNamespace(
            task_id=task_id,
            try_number=2,
            log_url=f"http://127.0.0.1:8080/dags/price_notification/runs/r/tasks/{task_id}?try_number=2",
        ),
        "dag": SimpleNamespace(dag_id="price_notification"),
        "run_id": "scheduled__2026-01-07T10:05:00+00:00",
        "data_interval_start": start,
        "data_interval_end": start + layout.SLOT,
        "dag_run": SimpleNamespace(run_after=start + layout.SLOT),
        "exception": exception,
    }


def render_ops(task_id: str, exception: object, context: dict | None = None) -> tuple[str, str]:
    """The message opening the incident of the failure (``incidents.failures_of``, OPS_MESSAGE rendered)."""
    context = context or ops_context(task_id, exception)
    message = JINJA.from_string(alerts.OPS_MESSAGE).render(context)
    window = windows.run_window_start(context.get("data_interval_start"), context["dag_run"].run_after)
    failures = incidents.failures_of("price_notification", task_id, exception, message)
    return incidents.opening(failures, window)[0], message


#: What analyse_pairs raises when the window's only record was quarantined (no pair has a record to decide).
QUARANTINE_FAILURE = windows.WindowFailed(
    'window 20260107T1000Z: no pair has a record to decide (ETH/USDT: quarantined: "record 0: weighted_average '
    'is not finite: \'NaN\'" (object "crypto/01-data-ingestion/year=2026/month=01/day=07/20260107T1000Z.json"))'
)


def test_ops_notification_of_the_sensor_says_the_feed_is_stale():
    subject, message = render_ops("wait_for_price_record", TimeoutError("Sensor has timed out"))

    assert subject == "[price pipeline] Feed stale: wait_for_price_record 2026-01-07 10:00 UTC"
    assert message.startswith("Feed stale: no price record arrived for window 2026-01-07 10:00:00+00:00 to ")
    assert "2026-01-07 10:05:00+00:00" in message


def test_ops_notification_of_a_quarantined_record_says_so():
    subject, message = render_ops("analyse_pairs", QUARANTINE_FAILURE)

    assert subject == "[price pipeline] Record quarantined: analyse_pairs 2026-01-07 10:00 UTC"
    assert message.startswith("Record quarantined for window 2026-01-07 10:00:00+00:00")
    assert "weighted_average is not finite" in message


def test_ops_notification_of_any_other_failure_says_task_failed():
    subject, message = render_ops("publish_price_alerts", ValueError("SNS said no"))

    assert subject == "[price pipeline] Task failed: publish_price_alerts 2026-01-07 10:00 UTC"
    assert message.startswith("Task publish_price_alerts failed for window 2026-01-07 10:00:00+00:00 to ")


def test_ops_notification_without_an_exception_still_renders_as_task_failed():
    subject, message = render_ops("normalize_price_record", None)

    assert subject.startswith("[price pipeline] Task failed: normalize_price_record")
    assert "Reason: None" in message


@pytest.mark.parametrize("task_id", DAG_TASK_IDS)
def test_ops_message_names_reason_dag_run_try_and_log(task_id):
    _, message = render_ops(task_id, ValueError("the reason"))

    assert "Reason: the reason" in message
    assert "DAG: price_notification, run scheduled__2026-01-07T10:05:00+00:00, try 2" in message
    assert f"Log: http://127.0.0.1:8080/dags/price_notification/runs/r/tasks/{task_id}?try_number=2" in message


def test_ops_notification_of_a_run_without_a_logical_date_names_the_window_it_analysed():
    context = {**ops_context("analyse_pairs", ValueError("x")), "dag_run": SimpleNamespace(run_after=SLOT)}
    del context["data_interval_start"], context["data_interval_end"]

    subject, message = render_ops("analyse_pairs", context["exception"], context)

    assert subject == "[price pipeline] Task failed: analyse_pairs 2026-02-03 11:55 UTC"  # the window before
    assert "(run without a logical date)" in message


#: A failure whose text quotes a record that says "claim": not a claim left.
CLAIM_IN_A_RECORD = windows.WindowFailed(
    'window 20260107T1000Z: no pair has a record to decide (ETH/USDT: quarantined: "record 0: pair is not a short '
    "text: 'claim left'\")"
)


def test_ops_notification_of_a_claim_left_by_a_crash_says_so():
    left = alerts.ClaimsLeft(f"ETH/USDT move-5m: {ledger.LEFT} (an earlier publish of price_notification/r)")

    subject, _ = render_ops("publish_price_alerts", left)

    assert subject == "[price pipeline] Alert claim left: publish_price_alerts 2026-01-07 10:00 UTC"


def test_ops_notification_of_a_failure_only_mentioning_a_claim_says_task_failed():
    """Issue 35: the subject (and the backfill page, below) tested for "claim" in the exception's text, which
    a record can carry; only our own claim-left failure is marked one (``alerts.ClaimsLeft.claim_left``)."""
    subject, _ = render_ops("analyse_pairs", CLAIM_IN_A_RECORD)

    assert subject.startswith("[price pipeline] Record quarantined: ")
    subject, _ = render_ops("publish_price_alerts", RuntimeError("SNS refused: the claim was too long"))

    assert subject.startswith("[price pipeline] Task failed: ")


@pytest.mark.parametrize(
    ("run_type", "exception", "paged"),
    [
        ("scheduled", ValueError("x"), True),
        ("backfill", ValueError("x"), False),
        ("backfill", CLAIM_IN_A_RECORD, False),
        ("backfill", alerts.ClaimsLeft("ETH/USDT move-5m: left"), True),
        ("backfill", "claim", False),
    ],
    ids=["live", "backfill", "backfill-claim-in-a-record", "backfill-claim-left", "backfill-text"],
)
def test_a_backfill_failure_pages_ops_only_for_a_claim_left(monkeypatch, run_type, exception, paged):
    from include.price_pipeline import operators, runs

    paged_as_is, observed = [], []
    monkeypatch.setattr(runs, "tell_ops", lambda config, subject, message: paged_as_is.append(subject))
    monkeypatch.setattr(runs, "observe_incidents", lambda config, seen, ti: observed.append(seen))
    notifier = operators.incident_callbacks(CONFIG)["on_failure_callback"]

    notifier.notify({**ops_context("publish_price_alerts", exception),
                     "dag_run": SimpleNamespace(run_type=run_type, run_after=SLOT)})  # fmt: skip

    if run_type == "backfill":  # never an incident: a claim left paged as it is
        assert (len(paged_as_is), observed) == (paged, [])
    else:
        [seen] = observed
        assert [(f.kind, f.subject, f.healer) for f in seen.failures] == [
            (incidents.TASK_FAILED, "publish_price_alerts", "price_notification.publish_price_alerts")
        ]


@pytest.mark.parametrize(
    ("outcome", "raised"),
    [
        ("sent", None),
        ("failed", RuntimeError),
        ("left", "ClaimsLeftFailure"),
        ("skipped", "AirflowSkipException"),
    ],
)
def test_the_publish_operator_turns_each_ledger_outcome_into_its_task_state(monkeypatch, outcome, raised):
    """One mapped publish per alert: sent returns its message id; SNS refused fails the try (the retry
    publishes it); a claim an earlier try left fails without retries and carries the mark ops are paged by;
    notified already (or not this run's claim) is a skip with the reason."""
    from airflow.providers.amazon.aws.operators.sns import SnsPublishOperator
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from include.price_pipeline import operators

    reason = f"ETH/USDT window 20260107T1000Z rule move-5m: {outcome}"
    result = {"sent": {}, "skipped": [], "failed": [], "left": []}
    result[outcome] = {"ETH/USDT move-5m": "message-1"} if outcome == "sent" else [reason]
    asked = []
    monkeypatch.setattr(ledger, "publish_alerts", lambda s3, config, slot, due, claimant, publish: asked.append(
        (slot, due, claimant)) or result)  # fmt: skip
    monkeypatch.setattr(operators, "S3Hook", lambda **kwargs: SimpleNamespace(get_conn=lambda: None))
    task = operators.AlertPublishOperator(task_id="publish_price_alerts", target_arn="arn:aws:sns:x", message="m",
                                          subject="s", pair="ETH/USDT", rule="move-5m")  # fmt: skip
    dag_run = SimpleNamespace(dag_id="price_notification", run_id="r", run_after=SLOT + layout.SLOT)
    context = {"dag_run": dag_run, "data_interval_start": SLOT}

    assert isinstance(task, SnsPublishOperator)
    if raised is None:
        assert task.execute(context) == {"pair": "ETH/USDT", "rule": "move-5m", "sns_message_id": "message-1"}
    else:
        kind = {"ClaimsLeftFailure": operators.ClaimsLeftFailure, "AirflowSkipException": AirflowSkipException}
        with pytest.raises(kind.get(raised, raised), match=reason) as failure:
            task.execute(context)
        assert getattr(failure.value, "claim_left", False) is (outcome == "left")
        assert isinstance(failure.value, AirflowFailException) is (outcome == "left")
    assert asked == [(SLOT, [{"pair": "ETH/USDT", "rule": "move-5m"}], "price_notification/r")]


@pytest.mark.parametrize("exception", [ValueError("x"), QUARANTINE_FAILURE, None])
@pytest.mark.parametrize("task_id", DAG_TASK_IDS)
def test_ops_subject_is_one_line_within_the_sns_limit_for_every_task(task_id, exception):
    subject, _ = render_ops(task_id, exception)

    assert "\n" not in subject
    assert len(subject) <= 100


@given(st.text(max_size=400))
def test_text_from_s3_is_quoted_on_one_line_and_can_become_no_slack_markup(text):
    """Issue 21, point 8: keys and reasons read from S3 reach ops text through alerts.quoted."""
    shown = alerts.quoted(text)
    assert shown.isascii()
    assert shown.isprintable()  # no line break, no control character
    assert not {"<", ">", "&"} & set(shown)
    assert json.loads(shown) == text[: alerts.QUOTED_LIMIT]


@pytest.mark.parametrize(
    ("run_type", "map_index", "observed"),
    [("scheduled", -1, True), ("manual", 0, True), ("scheduled", 7, False), ("backfill", -1, False)],
)
def test_a_live_tasks_success_heals_its_incidents_once_per_task(monkeypatch, run_type, map_index, observed):
    """Issue 38: the success callback reads the incident state once per task of a live window: a mapped
    publish of a hundred alerts through its first instance only; a backfill's success heals nothing."""
    from include.price_pipeline import operators, runs

    seen = []
    monkeypatch.setattr(runs, "observe_incidents", lambda config, observation, ti: seen.append(observation))
    heal = operators.incident_callbacks(CONFIG)["on_success_callback"]
    context = ops_context("publish_price_alerts", None)
    context["ti"].map_index = map_index
    context["dag_run"] = SimpleNamespace(run_type=run_type, run_after=SLOT)

    heal(context)

    assert [(s.window, s.healthy_task) for s in seen] == (
        [(utc(2026, 1, 7, 10, 0), "price_notification.publish_price_alerts")] if observed else []
    )

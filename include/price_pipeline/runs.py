"""The price DAGs' task bodies: the DAG files only declare and wire them (the classes they declare are
``operators``). With ``operators``, the modules of ``include/`` that import Airflow.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pendulum
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.sdk.exceptions import AirflowFailException

from include.price_pipeline import alerts, layout, operators, windows
from include.price_pipeline.operators import ClaimsLeftFailure, claimant
from include.price_pipeline.settings import Config

log = logging.getLogger(__name__)
NORMALIZE_TASK = "normalize_price_record"
#: States in which a window's normalize_price_record will not write its CSV any more.
FINISHED_STATES = ("success", "failed", "skipped", "upstream_failed", "removed")
#: Run states in which a run's tasks can still run (a failed run, a cancelled or completed backfill's,
#: never will, whatever state its task instances were left in).
ACTIVE_RUN_STATES = ("queued", "running")
#: How often a window waiting for an earlier one's normalization looks again.
PREVIOUS_WINDOW_POKE = timedelta(seconds=15)


def still_normalizing(ti, dag_id: str) -> windows.StillNormalizing:
    """``windows.StillNormalizing`` as the scheduler knows it: of the windows asked about, those with a run
    that can still normalize them (queued or running, its normalize_price_record not finished). A scheduled
    or backfill run's logical date is its window's end; a REST trigger may give the start: both are asked
    (a run of the next window found so is at worst waited for once more)."""

    def those(slots: list[datetime]) -> list[datetime]:
        out = []
        for slot in slots:
            dates = [slot, slot + layout.SLOT]
            runs = ti.get_task_states(dag_id=dag_id, task_ids=[NORMALIZE_TASK], logical_dates=dates)
            if any(
                tasks.get(NORMALIZE_TASK) not in FINISHED_STATES
                and ti.get_dagrun_state(dag_id=dag_id, run_id=run_id) in ACTIVE_RUN_STATES
                for run_id, tasks in runs.items()
            ):
                out.append(slot)
        return out

    return those


def analyse_when_settled(ti, analyse, wait_seconds: int) -> dict:
    """``analyse(still_normalizing=...)``, the one way a run waits on earlier windows: up for reschedule while
    ``windows.WindowNotReady`` (freeing the worker slot); after ``wait_seconds``, ``analyse()`` as things are."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowRescheduleException

    try:
        return analyse(still_normalizing=still_normalizing(ti, ti.dag_id))
    except windows.WindowNotReady as waiting:
        now = pendulum.now("UTC")
        started = ti.get_first_reschedule_date(get_current_context()) or now
        if now - started < timedelta(seconds=wait_seconds):
            log.info("%s (a record there, its run still able to normalize it); looking again shortly", waiting)
            raise AirflowRescheduleException(now + PREVIOUS_WINDOW_POKE) from waiting
        log.warning("%s; waited %s s, analysing with the CSVs there are", waiting, wait_seconds)
    return analyse()


def sns_publisher(config: Config):
    """``publish(alert) -> message id``: one alert (``subject``, ``message``, ``attributes``) to the alert topic."""
    from airflow.providers.amazon.aws.hooks.sns import SnsHook

    sns = SnsHook(aws_conn_id=config.aws_conn_id)

    def publish(alert: dict) -> str:
        kwargs = {"subject": alert["subject"], "message_attributes": alert["message_attributes"]}
        return sns.publish_to_target(config.alert_topic_arn, alert["message"], **kwargs)["MessageId"]

    return publish


def ops_sender(config: Config):
    """``send(subject, text)``: one ops message on the ops topic, and in Slack too with ``PRICE_SLACK_CONN_ID``
    (a Slack post that fails is logged: the topic has the message, and a retry would send it there twice)."""
    from airflow.providers.amazon.aws.hooks.sns import SnsHook

    sns = SnsHook(aws_conn_id=config.aws_conn_id)

    def send(subject: str, text: str) -> None:
        log.warning("Ops: %s\n%s", subject, text)
        sns.publish_to_target(target_arn=config.ops_topic_arn, subject=subject, message=text)
        if config.slack_conn_id:
            from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

            try:
                SlackWebhookHook(slack_webhook_conn_id=config.slack_conn_id).send_text(alerts.slack_text(subject, text))
            except Exception:
                log.exception("Slack refused the ops message %r (it is on the ops topic)", subject)

    return send


def tell_ops(config: Config, subject: str, message: str) -> None:
    """One message on the ops topic (and Slack), not an incident."""
    ops_sender(config)(subject, message)


def observe_incidents(config: Config, seen, ti) -> None:
    """``incidents.observe`` on the deployment's state and ops topic, by the task instance ``ti`` (its retry
    sends what it left unsent). When the state cannot be read or written, the failures seen are paged as they
    are, the reason added: ops hear of them, if not once."""
    import time

    from include.price_pipeline import incidents

    repeat = timedelta(minutes=config.ops_repeat_minutes)
    sender = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{ti.map_index}"
    try:
        sent = incidents.observe(_s3(config), config.bucket, config.changes_prefix, seen, repeat,
                                 ops_sender(config), time.time(), sender)  # fmt: skip
    except incidents.NotSent:
        raise
    except Exception as error:
        if not seen.failures:
            raise
        log.exception("The incident state could not be changed: paging the failures as they are")
        subject, text = incidents.opening(list(seen.failures), seen.window)
        tell_ops(config, subject, f"{text}\n\n(Not an incident: its state could not be changed: "
                                  f"{type(error).__name__}: {alerts.quoted(error)})")  # fmt: skip
        return
    log.info("Ops incidents: %s", "; ".join(subject for subject, _ in sent) or "nothing to tell")


# ------------------------------------------------------------------ price_notification's task bodies


def window_start(dag_run) -> datetime:
    """The run's window (for templates: ``{{ window_start(dag_run) }}``)."""
    return windows.run_window_start(dag_run.data_interval_start, dag_run.run_after)


def _s3(config: Config):
    return S3Hook(aws_conn_id=config.aws_conn_id).get_conn()


def _run_url(dag_run) -> str:
    from airflow.configuration import conf

    return alerts.run_url(conf.get("api", "base_url"), dag_run.dag_id, dag_run.run_id)


def _due(config: Config, params, dag_run, slot: datetime) -> tuple[bool, str]:
    """Whether the window's breaches may notify subscribers (freshness is about the clock, not about
    what is processed), and if not, why."""
    from include.price_pipeline import analysis

    end = slot + layout.SLOT
    return analysis.due_for_subscribers(
        dag_run.run_type, end, operators._now(), config.max_alert_age_minutes, params["notify_on_backfill"]
    )


def run_rules(rule_set, params):
    """The run's rules (``rules.with_overrides``): a conf naming a pair or rule there is not fails the task
    at once with the one-line reason (another try would only meet it again)."""
    from include.price_pipeline import rules

    try:
        return rules.with_overrides(rule_set, params)
    except rules.RulesError as error:
        raise AirflowFailException(str(error)) from None


def analyse_pairs(config: Config, rule_set, params, data_interval_start, dag_run, ti) -> list[dict]:
    """Every pair's rules for the window (``ledger.analyse_pairs``) with the run's params (``run_rules``).
    Returns the due alerts; the notices for ops go to XCom ``ops``, which ``report_window_to_ops`` sends beside
    the publish: an ops topic that cannot be told holds no alert."""
    from functools import partial

    from include.price_pipeline import ledger

    slot = windows.run_window_start(data_interval_start, dag_run.run_after)
    if data_interval_start is None:
        log.info("Run without a logical date (triggered for %s): analysing the latest complete window, %s",
                 dag_run.run_after, layout.iso(slot))  # fmt: skip
    due, why_not = _due(config, params, dag_run, slot)
    run_url = _run_url(dag_run)
    analyse = partial(ledger.analyse_pairs, _s3(config), config, run_rules(rule_set, params), slot, due, why_not,
                      run_url, claimant(dag_run))  # fmt: skip
    try:
        result = analyse_when_settled(ti, analyse, config.previous_window_wait_seconds)
    except (windows.WindowFailed, ledger.DamagedLedger, alerts.UnsafeText) as failure:
        raise AirflowFailException(str(failure)) from None
    stamp, ops = layout.slot_stamp(slot), {"window": layout.iso(slot), "notices": []}
    if result["late"]:
        log.warning("Pairs late for window %s: %s", stamp, result["late"])
    if due and dag_run.run_type != "backfill":  # a live window: its pairs are incidents (a backfill's only logs)
        late = result["late"]
        ops |= {"late": late, "on_time": sorted(set(rule_set.pairs) - set(late)), "run_url": run_url}
    if result["ops_notice"]:
        ops["notices"].append([f"[price pipeline] Alerts not sent: {stamp}", result["ops_notice"]])
    ti.xcom_push(key="ops", value=ops)
    log.info("Peak memory of this task's process: %.0f MiB", peak_memory_mib())
    return result["alerts"]


def peak_memory_mib() -> float:
    """The task process's peak resident memory so far (Linux ``ru_maxrss``, KiB), in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report_window_to_ops(config: Config, ops: dict, ti) -> None:
    """The window's news for ops (``analyse_pairs``'), beside its publish: a live window's late pairs are
    incidents (each opened once, resolved by its first record on time: ``incidents.late_pairs``), and its
    alerts not sent a notice. Each is tried; one the ops topic refuses fails the task after the others."""
    from include.price_pipeline import incidents, ledger

    failed = []
    if "late" in ops:
        failures, healthy = incidents.late_pairs(ops["late"], ops["on_time"])
        seen = incidents.Observation(layout.parse_iso(ops["window"]), failures, healthy=healthy,
                                     note=ledger.late_note(ops["run_url"]))  # fmt: skip
        try:
            observe_incidents(config, seen, ti)
        except Exception as error:  # noqa: BLE001 - the notices are tried too; the failure is raised below
            log.error("Ops incidents of the late pairs not told (%s: %s)", type(error).__name__, error)
            failed.append(f"incidents: {type(error).__name__}: {error}")
    for subject, message in ops["notices"]:
        try:
            tell_ops(config, subject, message)
        except Exception as error:  # noqa: BLE001 - each notice is tried; the failure is raised below
            log.error("Could not tell ops %r (%s: %s); the notice is above", subject, type(error).__name__, error)
            failed.append(f"{subject}: {type(error).__name__}: {error}")
    if failed:
        raise RuntimeError("ops topic refused: " + "; ".join(failed))


def post_slack_alerts(config: Config, due: list[dict], published) -> None:
    """The alerts SNS accepted (the mapped publish's returns; a skipped one returns none), in one Slack
    message (one webhook call: a retry repeats one message)."""
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook
    from airflow.sdk.exceptions import AirflowSkipException

    sent = {(each["pair"], each["rule"]) for each in published or () if each}
    texts = [
        alerts.slack_text(alert["subject"], alert["message"]) for alert in due if (alert["pair"], alert["rule"]) in sent
    ]
    if not texts:
        raise AirflowSkipException("no alert was sent")
    SlackWebhookHook(slack_webhook_conn_id=config.slack_conn_id).send_text("\n\n".join(texts))


# ------------------------------------------------------------------ price_history_backfill's task bodies


def analyse_price_history(config: Config, rule_set, params, dag_run) -> dict:
    """The range's windows of every pair, by the run's rules (``history.backfill_history``)."""

    from include.price_pipeline import history

    try:
        start, end = (history.parse_window_start(params[name]) for name in ("start", "end"))
        notify = params["notify_on_backfill"]
        summary = history.backfill_history(
            _s3(config), config, start, end, run_rules(rule_set, params), notify, pendulum.now("UTC"),
            sns_publisher(config) if notify else None, _run_url(dag_run), claimant=claimant(dag_run),
        )  # fmt: skip
    except alerts.ClaimsLeft as failure:
        raise ClaimsLeftFailure(str(failure)) from None
    except (history.NoUsableWindow, alerts.UnsafeText) as failure:
        raise AirflowFailException(str(failure)) from None
    return summary | {"peak_memory_mib": round(peak_memory_mib())}


def report_quarantine(config: Config, summary: dict, dag_run) -> None:
    """Ops' one message of a range with quarantined objects (``quarantine.report_quarantine``), if any."""
    from include.price_pipeline import quarantine

    report = quarantine.report_quarantine(_s3(config), config, summary, _run_url(dag_run))
    if report is not None:
        tell_ops(config, *report)


# ------------------------------------------------------------------ the exchange feed's task bodies


class FeedFailed(Exception):
    """A pair's candles could not be had for a reason another try may not meet (one line per pair): Airflow
    retries the task; its last try's failure is a *Feed problem* incident of each of ``exchanges`` (README
    "Exchange feed")."""

    def __init__(self, message: str, exchanges: set[str]):
        super().__init__(message)
        self.exchanges = sorted(exchanges)


class FeedRefused(FeedFailed, AirflowFailException):
    """FeedFailed where no pair's candle could be had and every problem is an answer another try would only
    repeat: no retry."""


def fetch_exchange_candles(config: Config, rule_set, data_interval_start, dag_run) -> dict:
    """price_exchange_feed's task: every pair's candle of the run's window from its exchange, written once
    where the pair has no record yet. A pair whose candle could not be had fails the task after the other
    pairs' were written, with one line per pair (ops: *Feed problem*, once)."""
    from include.price_pipeline import exchange

    slot = windows.run_window_start(data_interval_start, dag_run.run_after)
    done = exchange.write_candles(_s3(config), config, rule_set, slot, slot + layout.SLOT, operators._now())
    return _fetched(done, f"window {slot:%Y-%m-%d %H:%M} UTC", missing_is_a_problem=True)


def fetch_exchange_history(config: Config, rule_set, params) -> dict:
    """price_history_backfill's first task, when ``fetch_from_exchange``: the range's closed candles of every
    pair that has no record yet, fetched in pages and written once (``exchange.write_candles``)."""
    from include.price_pipeline import exchange, history

    if not params["fetch_from_exchange"]:
        log.info("fetch_from_exchange is off: the range's records are those producers wrote")
        return {}
    start, end = (history.parse_window_start(params[name]) for name in ("start", "end"))
    start, end = exchange.closed_range(start, end, operators._now())
    done = exchange.write_candles(_s3(config), config, rule_set, start, end, operators._now())
    return _fetched(done, f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC", missing_is_a_problem=False)


def _fetched(done: dict, what: str, missing_is_a_problem: bool) -> dict:
    """Log each pair's fetch; fail with the problems (one line per pair, naming its exchange). A live window
    (``missing_is_a_problem``) refused or not served is a problem; a range's refused windows are logged and
    cost those windows only: the range goes on to be normalized and decided."""
    problems, exchanges = [], set()
    for pair, fetched in done.items():
        (log.warning if fetched.refused else log.info)("%s, %s: %s", pair, what, fetched.summary())
        found = list(fetched.problems)
        if missing_is_a_problem:
            found += fetched.refused
            if fetched.not_served:
                found.append(f"{fetched.exchange} {pair}: the exchange served no candle for {what}")
        problems += found
        if found:
            exchanges.add(fetched.exchange)
    if problems:
        failure = FeedFailed if any(fetched.passing for fetched in done.values()) else FeedRefused
        raise failure(f"Feed problem, {what}: " + "; ".join(problems), exchanges)
    return {pair: fetched.summary() for pair, fetched in done.items()}

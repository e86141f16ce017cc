"""``make run``: the whole pipeline on this machine, no AWS account needed.

Starts the AWS stand-in, PostgreSQL (the metadata database, in ``.local/postgres``) and Airflow
(scheduler, dag-processor, triggerer, api-server on 127.0.0.1, LocalExecutor or CeleryExecutor),
unpauses ``price_notification``, starts the price feed, backfills the feed's past hour, prints the UI
address and login, then prints every notification (alerts and ops) as it arrives. Ctrl-C stops every
process it started, as do SIGTERM and SIGHUP (the terminal closed).

Options (environment): STATE_DIR (``.local``), STANDIN_PORT (4566), AIRFLOW_PORT (8080), FEED_REPLAY (a
Poloniex CSV to replay instead of the synthetic walk), STANDIN_FAULTS (fault injection spec, see local/standin.py),
AIRFLOW_EXECUTOR (LocalExecutor, or CeleryExecutor: two Celery workers and a local Redis broker),
PRICE_RULES_FILE (default here ``include/rules/local.json``: three pairs, a rule of each kind),
ALERT_SUBSCRIPTIONS_FILE (default ``local/alert_subscriptions.json``: three subscribers, each a queue on the stand-in
with its filter policy; every alert printed says which of them received it; empty: none),
FEED (``exchange``: prices from an exchange through ccxt instead of the synthetic feed: the exchange
stand-in on EXCHANGE_PORT, 8765, serving real candles, or the exchange itself when PRICE_EXCHANGE_URL
names its API, e.g. ``https://api.binance.com/api/v3``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from include.price_pipeline import layout, settings
from local import subscriptions
from local.api import Api, ApiError
from local.stack import ADMIN_USER, ROOT, Stack

DAG_ID = "price_notification"


def describe(notification: dict, topic: str, received_by: list[str] | None = None) -> str:
    """One console block per SNS notification; ``received_by``: the alert subscriptions it reached."""
    stamp = time.strftime("%H:%M:%S")
    heading = f"\n[{stamp}] {topic.upper()}: {notification.get('Subject', '')}\n    "
    if received_by is not None:
        heading += f"Received by: {', '.join(received_by) or 'no subscription (no filter policy admits it)'}\n    "
    return heading + notification["Message"].replace("\n", "\n    ")


#: make run watches three pairs with a rule of each kind, so a newcomer sees each fire within minutes.
LOCAL_RULES_FILE = "include/rules/local.json"


#: Where ``make run FEED=exchange`` leaves the feed's settings for ``make backfill FETCH=1``.
FEED_SETTINGS = "exchange-feed.json"
FEED_DAG_ID = "price_exchange_feed"


def main() -> int:
    faults = os.environ.get("STANDIN_FAULTS")
    feed = os.environ.get("FEED", "synthetic")
    if feed not in ("synthetic", "exchange"):
        print(f"FEED={feed}: synthetic (the default) or exchange")
        return 2
    real_exchange = os.environ.get("PRICE_EXCHANGE_URL", "")
    subscriptions_file = os.environ.get("ALERT_SUBSCRIPTIONS_FILE", str(subscriptions.EXAMPLE))
    try:
        alert_subscriptions = subscriptions.load(subscriptions_file) if subscriptions_file else []
    except (OSError, ValueError) as problem:
        print(f"ALERT_SUBSCRIPTIONS_FILE: {problem}")
        return 2
    standin_args = ("--faults", faults) if faults else ()
    standin_args += ("--subscriptions", subscriptions_file) if subscriptions_file else ()
    stack = Stack(
        state_dir=Path(os.environ.get("STATE_DIR", ROOT / ".local")),
        standin_port=int(os.environ.get("STANDIN_PORT", "4566")),
        api_port=int(os.environ.get("AIRFLOW_PORT", "8080")),
        standin_args=standin_args,
        executor=os.environ.get("AIRFLOW_EXECUTOR", "LocalExecutor"),
        # Airflow's processes and the feed get it; this process's environment stays as it was.
        extra_env={"PRICE_RULES_FILE": os.environ.get("PRICE_RULES_FILE", LOCAL_RULES_FILE)},
        exchange_port=int(os.environ.get("EXCHANGE_PORT", "8765")) if feed == "exchange" and not real_exchange else 0,
    )
    stop = False

    def request_stop(*_):
        nonlocal stop
        stop = True

    # SIGHUP: the terminal was closed. Every process started runs in a session of its own, out of its reach.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, request_stop)
    try:
        start(stack, replay=os.environ.get("FEED_REPLAY"), exchange=feed == "exchange")
        print(
            f"\nAirflow UI: {stack.ui_url}  (login: {ADMIN_USER} / {stack.admin_password()}; "
            f"the password is kept in {stack.passwords_file})\n"
            f"Logs: {stack.logs}/   Stop with Ctrl-C.\nWaiting for notifications ...",
            flush=True,
        )
        watch_notifications(stack, lambda: stop, alert_subscriptions)
    finally:
        with contextlib.suppress(OSError):  # a closed terminal fails every write
            print("\nStopping every process ...", flush=True)
        stack.stop()
        with contextlib.suppress(OSError):
            print("Stopped.", flush=True)
    return 0


def start(
    stack: Stack, replay: str | None = None, log=print, exchange: bool = False, history_windows: int = 11
) -> dict | None:
    """Everything ``make run`` starts, in order; returns the history backfill of ``history_windows`` windows
    (None if refused)."""
    log(f"Starting the AWS stand-in on {stack.standin_url} ...", flush=True)
    stack.start_standin()
    if stack.exchange_port:
        log(f"Starting the exchange stand-in on {stack.exchange_url} (real candles, Binance's API) ...", flush=True)
        stack.start_exchange()
    log(f"Starting PostgreSQL ({stack.postgres.data_dir}) and preparing the Airflow database ...", flush=True)
    stack.start_database()
    log(f"Starting api-server, scheduler, dag-processor and triggerer ({stack.executor}) ...", flush=True)
    stack.start_airflow()
    stack.wait_for_dag(DAG_ID)
    stack.airflow("dags", "unpause", DAG_ID)
    if exchange:
        env = stack.env()
        feed_env = {name: env[name] for name in ("PRICE_RULES_FILE", "PRICE_EXCHANGE_URL") if name in env}
        feed_env["AWS_ENDPOINT_URL"] = stack.standin_url  # make backfill FETCH=1 writes there too
        (stack.state_dir / FEED_SETTINGS).write_text(json.dumps(feed_env))
        latest = layout.slot_start(datetime.now(UTC)) - layout.SLOT  # the feed DAG's first run fetches it
        try:
            fetched = fetch_history(stack, latest - layout.SLOT * 11, latest)
            log(
                f"The past hour's candles, from {env.get('PRICE_EXCHANGE_URL') or 'the exchange'}: {fetched}",
                flush=True,
            )
        except RuntimeError as problem:
            log(f"The past hour's candles were not all fetched: {problem}", flush=True)
        stack.wait_for_dag(FEED_DAG_ID)
        stack.airflow("dags", "unpause", FEED_DAG_ID)
    else:
        feed_argv = [sys.executable, "-m", "local.feed", "--endpoint", stack.standin_url,
                     "--state-dir", str(stack.state_dir)]  # fmt: skip
        if replay:
            feed_argv += ["--replay", replay]
        stack._spawn("feed", feed_argv)
    return backfill_history(Api(stack), history_windows, log=log)


def fetch_history(stack: Stack, start: datetime, end: datetime, feed_env: dict | None = None) -> dict:
    """Every pair's closed candles of ``[start, end)`` that have no record, from the exchange feed's exchange
    (``exchange.write_candles``, as price_history_backfill's fetch); each pair's counts. RuntimeError with
    each pair's one-line reason when a pair's candles could not be had."""
    from include.price_pipeline import exchange
    from local.standin import client

    feed_env = feed_env or {}
    config = settings.load({**stack.env(), **feed_env})
    s3 = client("s3", feed_env.get("AWS_ENDPOINT_URL", stack.standin_url), stack.aws_credentials)
    start, end = exchange.closed_range(start, end, datetime.now(UTC))
    done = exchange.write_candles(s3, config, settings.load_rules(config), start, end, datetime.now(UTC))
    problems = [problem for fetched in done.values() for problem in fetched.problems]
    if problems:
        raise RuntimeError("; ".join(problems))
    return {pair: fetched.summary() for pair, fetched in done.items()}


def backfill_history(api: Api, windows: int = 11, log=print) -> dict | None:
    """Backfill the hour of history the feed writes at start, so live windows have a previous price;
    say why when Airflow refuses it.

    Backfill runs record breaches as suppressed: subscribers only hear about fresh windows.
    """
    latest = layout.slot_start(datetime.now(UTC)) - 2 * layout.SLOT  # the scheduler runs the one after
    first = latest - layout.SLOT * (windows - 1)
    try:
        backfill = api.create_backfill(first, latest, notify=False, max_active_runs=4)
    except ApiError as error:
        log(f"The history backfill ({first:%H:%M} to {latest:%H:%M} UTC) was not created: {error.reason}", flush=True)
        return None
    log(
        f"History backfill {backfill['id']} created: {windows} windows, {first:%H:%M} to {latest:%H:%M} UTC "
        f"({api.backfill_ui_url()})",
        flush=True,
    )
    return backfill


def watch_notifications(stack: Stack, should_stop, alert_subscriptions: list[dict] = ()) -> None:
    """Print alert and ops notifications from the stand-in's subscriber queues until told to stop."""
    config = settings.load()
    sqs = stack.client("sqs")
    subscribers = subscriptions.queues(sqs, config.alert_topic_arn, list(alert_subscriptions))
    while not should_stop():
        print_notifications(sqs, config, subscribers)
        for name, process in stack.processes.items():
            if process.poll() is not None:
                raise subprocess.SubprocessError(
                    f"{name} exited (code {process.returncode}); see {stack.logs}/{name}.log"
                )
        time.sleep(2)


def print_notifications(sqs, config: settings.Config, subscribers: dict[str, str], out=print) -> None:
    """Print the alert and ops notifications waiting in the topics' ``-inbox`` queues (each alert with the
    ``subscribers`` that received it, when there are any), removing them and the subscribers' copies."""
    from local.soak import receive_all
    from local.standin import queue_name

    inboxes = {"alert": config.alert_topic_arn, "ops": config.ops_topic_arn}
    waiting = {topic: receive_all(sqs, sqs.get_queue_url(QueueName=queue_name(arn))["QueueUrl"], wait_seconds=0)
               for topic, arn in inboxes.items()}  # fmt: skip
    received = subscriptions.received(sqs, subscribers)  # after the inboxes: every copy of theirs is there
    for topic, notifications in waiting.items():
        for notification in notifications:
            receivers = received.get(notification["MessageId"], []) if topic == "alert" and subscribers else None
            out(describe(notification, topic, receivers), flush=True)


if __name__ == "__main__":
    sys.exit(main())

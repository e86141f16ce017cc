"""Killing things mid-run: the task runner during the Glue run and during the publish, the scheduler
in the middle of a backfill. Afterwards no window is missing, none is notified twice, and no try
started a second Glue run.

One private stack (local/soak.py: stand-in, PostgreSQL, scheduler, dag-processor, triggerer,
api-server on free ports, no cron runs) serves the module. The stand-in's holds (local/faults.py) stop a call at the
moment a test wants to kill, so a kill lands where the test says, not where timing happens to put
it. The LocalExecutor's task runner (``airflow worker -- <ti id>``) gets SIGKILL, as from the OOM
killer; its supervisor reports the try failed and the scheduler retries it.

Each test has its own day in 2017, so their windows and Glue runs never mix.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from local import faults, soak
from local.api import backfill_when_free
from local.feed import write_record
from tests.records import candle, seed_normalized

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

SLOT = timedelta(minutes=5)


@pytest.fixture(scope="module")
def stack(stack_dir):
    stack = soak.soak_stack(stack_dir)
    try:
        stack.api = soak.start_stack(stack)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def aws(stack):
    return soak.aws_clients(stack)


@pytest.fixture(scope="module")
def api(stack):
    return stack.api


@pytest.fixture
def switch(stack):
    """Set the stand-in's faults for one test; off again afterwards."""
    yield lambda spec: faults.set_faults(stack.standin_url, spec)
    faults.set_faults(stack.standin_url, "off")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def breach_window(aws, slot: datetime, price: float = 103.0) -> None:
    """A window whose record is ``price`` after 100.0 in the window before (already normalized)."""
    seed_normalized(aws["s3"], soak.BUCKET, candle(slot - SLOT, 100.0))
    write_record(aws["s3"], soak.BUCKET, candle(slot, price), pair="ETH/USDT")


def held(stack, phase: str, service: str, action: str) -> bool:
    return any(
        (h["phase"], h["service"], h["action"]) == (phase, service, action)
        for h in faults.fault_state(stack.standin_url)["held"]
    )


def alerts_by_window(aws) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for alert in soak.receive_all(aws["sqs"], soak.queue_url(aws["sqs"], "price-alerts")):
        [window] = soak.alert_windows([alert])
        out.setdefault(window, []).append(alert)
    return out


def ops_subjects(aws) -> list[str]:
    """Ops notifications since the last call: a kill the retries recovered from raises none."""
    return [m.get("Subject") for m in soak.receive_all(aws["sqs"], soak.queue_url(aws["sqs"], "price-pipeline-ops"))]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def kill_while_held(stack, aws, api, switch, slot: datetime, spec: str, call: tuple[str, str, str], task_id: str):
    """Backfill a breaching window with ``call`` (phase, service, action) held by the stand-in's
    ``spec``, and SIGKILL ``task_id``'s task runner while the call is held. Returns (run id, the
    killed try number)."""
    breach_window(aws, slot)
    switch(spec)
    run_id = soak.backfill_window(stack, api, slot)
    soak.wait_for(lambda: held(stack, *call), what=f"{call} held", stack=stack)
    ti_id, killed_try, _ = soak.task_instance(stack, run_id, task_id)
    soak.kill_task_runner(stack, ti_id)
    return run_id, killed_try


def wait_finished(stack, run_id: str, state: str = "success") -> None:
    assert soak.wait_for(lambda: soak.run_state(stack, run_id) in ("success", "failed"), stack=stack)
    assert soak.run_state(stack, run_id) == state


def assert_notified_once(aws, slot: datetime) -> dict:
    """One alert for the window, its id in the ledger's ``notified`` entry, nothing for ops."""
    [alert] = alerts_by_window(aws)[iso(slot)]
    entry = soak.ledger_entry(aws["s3"], slot)
    assert entry["decision"] == "notified"
    assert entry["sns_message_id"] == alert["MessageId"]
    assert ops_subjects(aws) == []
    return alert


def test_worker_killed_during_the_glue_run_retries_into_the_same_run_and_notifies_once(stack, aws, api, switch):
    slot = utc(2017, 7, 18, 10, 0)
    # Glue starts the run but its answer is held, and the run stays in start-up: the task runner is
    # alive and the Glue run is going when the kill lands.
    run_id, killed_try = kill_while_held(
        stack, aws, api, switch, slot, "glue:StartJobRun.reply_ms=600000,glue_startup_ms=600000",
        ("reply", "glue", "StartJobRun"), "normalize_price_record",
    )  # fmt: skip
    switch("glue_startup_ms=600000")  # the run is still starting up when the retry looks for it
    soak.wait_for(
        lambda: soak.task_instance(stack, run_id, "normalize_price_record")[1:] == (killed_try + 1, "deferred"),
        what="the retry deferred on a Glue run",
        stack=stack,
    )
    # The deferring process's exit reaches the scheduler seconds later. A trigger firing before that lets the
    # resumed try meet that event: Airflow marks it for retry and refuses its report (apache/airflow#72716).
    exited = (f"Received executor event with state success for task instance TaskInstanceKey(dag_id='{soak.DAG_ID}', "
              f"task_id='normalize_price_record', run_id='{run_id}', try_number={killed_try + 1}")  # fmt: skip
    soak.wait_for(lambda: exited in (stack.logs / "scheduler.log").read_text(), what="the deferral seen", stack=stack)
    switch("off")

    wait_finished(stack, run_id)
    assert soak.glue_runs_by_window(aws["glue"])[iso(slot)] == 1, "the retry started a second Glue run"
    assert_notified_once(aws, slot)


def test_worker_killed_during_the_publish_call_leaves_its_claim_to_ops_and_does_not_publish(stack, aws, api, switch):
    """The Publish never reached SNS, but the try had started publishing: the retry cannot know, so it
    does not publish (at most once) and ops get the window (README: releasing a claim)."""
    slot = utc(2017, 7, 20, 10, 0)
    # The Publish call is held on its way to SNS: the kill lands while it is in flight.
    run_id, killed_try = kill_while_held(
        stack, aws, api, switch, slot, "sns:Publish.latency_ms=600000", ("latency", "sns", "Publish"),
        "publish_price_alerts",
    )  # fmt: skip
    dropped = soak.wait_for(
        lambda: faults.fault_state(stack.standin_url)["dropped"].get("sns:latency"), what="the call dropped"
    )
    switch("off")

    assert dropped == 1  # the killed try's Publish never reached SNS
    wait_finished(stack, run_id, "failed")
    assert soak.task_instance(stack, run_id, "publish_price_alerts")[1:] == (killed_try + 1, "failed")
    assert iso(slot) not in alerts_by_window(aws)
    entry = soak.ledger_entry(aws["s3"], slot)
    assert (entry["decision"], entry["claimed_by"], entry["publish_started"]) == (
        "publishing",
        f"{soak.DAG_ID}/{run_id}",
        True,
    )
    assert ops_subjects(aws) == ["[price pipeline] Alert claim left: publish_price_alerts 2017-07-20 10:00 UTC"]


def test_worker_killed_after_sns_accepted_the_publish_does_not_notify_twice(stack, aws, api, switch):
    """SNS did the work but the answer (or the ledger write after it) never came back: before the claim
    the retry published again (the one at-least-once case); now it finds its started claim and stops."""
    slot = utc(2017, 7, 21, 10, 0)
    run_id, _ = kill_while_held(
        stack, aws, api, switch, slot, "sns:Publish.reply_ms=600000", ("reply", "sns", "Publish"),
        "publish_price_alerts",
    )  # fmt: skip
    switch("off")

    wait_finished(stack, run_id, "failed")
    [alert] = alerts_by_window(aws)[iso(slot)]
    assert alert["Subject"].startswith("ETH/USDT up 3.00%")
    assert soak.ledger_entry(aws["s3"], slot)["decision"] == "publishing"
    assert ops_subjects(aws) == ["[price pipeline] Alert claim left: publish_price_alerts 2017-07-21 10:00 UTC"]


def test_scheduler_restarted_in_the_middle_of_a_backfill_leaves_no_window_missing_or_notified_twice(stack, aws, api):
    first = utc(2017, 7, 22, 10, 0)
    prices = (102.0, 102.1, 99.0, 99.2, 101.0)  # after 100.0 at 09:55
    seed_normalized(aws["s3"], soak.BUCKET, candle(first - SLOT, 100.0))
    slots = [first + n * SLOT for n in range(len(prices))]
    for slot, price in zip(slots, prices, strict=True):
        write_record(aws["s3"], soak.BUCKET, candle(slot, price), pair="ETH/USDT")
    backfill_id = backfill_when_free(stack, api, slots[0], slots[-1], notify=True, max_active_runs=3)["id"]

    def states():
        return dict(
            stack.query("SELECT state, count(*) FROM dag_run WHERE backfill_id = %s GROUP BY state", backfill_id)
        )

    soak.wait_for(lambda: states().get("success") and states().get("running"), what="backfill half done", stack=stack)
    stack.restart("scheduler")
    runs = soak.wait_for_backfill(stack, backfill_id, timeout=900)

    assert runs == {"success": len(slots)}
    alerts = alerts_by_window(aws)
    assert all(len(sent) == 1 for sent in alerts.values()), {w: len(sent) for w, sent in alerts.items()}
    entries = {iso(slot): soak.ledger_entry(aws["s3"], slot) for slot in slots}
    assert all(entries.values()), [window for window, entry in entries.items() if not entry]
    notified = {window: entry["sns_message_id"] for window, entry in entries.items() if entry["decision"] == "notified"}
    assert notified == {window: sent[0]["MessageId"] for window, sent in alerts.items()}
    assert notified, "the series has breaches"
    tries = dict(
        stack.query(
            "SELECT d.data_interval_start, t.try_number FROM task_instance t JOIN dag_run d USING (dag_id, run_id) "
            "WHERE d.backfill_id = %s AND t.task_id = 'normalize_price_record'",
            backfill_id,
        )
    )
    glue = soak.glue_runs_by_window(aws["glue"])
    for start, try_number in tries.items():
        window = iso(start.astimezone(UTC))
        assert 1 <= glue[window] <= try_number, (window, glue[window], try_number)
    assert ops_subjects(aws) == []


# ------------------------------------------------------------ the running stack, from outside


def test_the_api_and_ui_answer_only_after_a_login(stack):
    """SimpleAuthManager with its generated password, not all-admins mode: no token, no data."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", stack.api_port, timeout=30)
    connection.request("GET", f"/api/v2/dags/{soak.DAG_ID}")
    status = connection.getresponse().status
    connection.close()

    assert status == 401
    assert stack.passwords_file.exists()


def test_every_port_the_stack_listens_on_is_on_loopback(stack):
    """Airflow's log servers would bind every interface; the stack starts without them."""
    listening = stack.listening()

    assert listening
    assert {ip for ip, _ in listening} <= {"127.0.0.1"}, sorted(listening)

"""The window's Glue task: a run that ends within seconds is watched to its end on the worker (a deferral
costs a second task start, 1.5-2 s of a local window's latency), a longer one is deferred as the provider
defers it. Against moto's Glue, whose run state is held RUNNING for a number of reads or ended at once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from moto import mock_aws
from moto.moto_api import state_manager

from include.price_pipeline import operators, settings

BUCKET = "price-bucket"


@pytest.fixture
def aws(monkeypatch):
    import boto3

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        boto3.client("iam").create_role(RoleName="price-glue", AssumeRolePolicyDocument="{}")
        yield
    state_manager.unset_transition("glue::job_run")


def glue_task() -> operators.WindowGlueJobOperator:
    config = SimpleNamespace(glue_job_name="normalize", bucket=BUCKET, glue_role_name="price-glue")
    return operators.WindowGlueJobOperator(
        task_id="normalize_price_record",
        aws_conn_id=None,
        deferrable=True,
        verbose=False,
        **settings.glue_job_spec(config),
        **settings.glue_wait(settings.GLUE_JOB_TIMEOUT_MINUTES, 1),
    )


def context() -> dict:
    pushed = {}
    ti = SimpleNamespace(dag_id="price_notification", task_id="normalize_price_record", run_id="r", map_index=-1,
                         try_number=1, xcom_push=lambda key, value: pushed.__setitem__(key, value))  # fmt: skip
    return {"ti": ti, "pushed": pushed}


def test_a_run_that_ends_within_seconds_ends_the_task_without_a_deferral(aws):
    state_manager.set_transition("glue::job_run", {"progression": "manual", "times": 2})  # 2 reads a state
    ctx = context()

    run_id = glue_task().execute(ctx)

    assert run_id == ctx["pushed"]["glue_job_run_id"]


def test_a_run_still_going_after_the_short_wait_is_deferred_to_the_providers_trigger(aws, monkeypatch):
    from airflow.providers.amazon.aws.triggers.glue import GlueJobCompleteTrigger
    from airflow.sdk.exceptions import TaskDeferred

    state_manager.set_transition("glue::job_run", {"progression": "manual", "times": 10_000})
    monkeypatch.setattr(operators.WindowGlueJobOperator, "SHORT_RUN", 0.6)
    ctx = context()

    with pytest.raises(TaskDeferred) as deferred:
        glue_task().execute(ctx)

    assert isinstance(deferred.value.trigger, GlueJobCompleteTrigger)
    assert deferred.value.trigger.run_id == ctx["pushed"]["glue_job_run_id"]
    assert deferred.value.method_name == "execute_complete"

# Airflow for docker-compose.yaml: the official image plus this project's pinned requirements, and
# moto's server for the aws-standin service (python -m local.standin). DAGs, include/, plugins/ and
# local/ are mounted by compose, not baked in.
FROM apache/airflow:3.3.2-python3.11

USER airflow

COPY --chown=airflow:root requirements.txt constraints.txt /opt/airflow/requirements/

# Same pins as the local venv (requirements.txt with constraints.txt, our own full freeze);
# moto[server] is the stand-in's only extra (pinned as in requirements-dev.txt).
RUN pip install --no-cache-dir \
        -r /opt/airflow/requirements/requirements.txt \
        "moto[server]==5.2.5" \
        -c /opt/airflow/requirements/constraints.txt

ENV PYTHONPATH=/opt/airflow

# Each compose service declares its own health check (api-server, scheduler, worker, ...).
HEALTHCHECK NONE

"""Structure of docker-compose.yaml, the Dockerfile and .dockerignore (no Docker engine needed).

``docker compose config`` runs too where a compose client is installed; everything else reads the
YAML, so the stack's wiring (health checks, start order, mounts, the stand-in connection, the
PRICE_* environment) is checked on any machine.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from include.price_pipeline import settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
DEFAULTS = {s.env: s.default for s in settings.SETTINGS}

AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
REQUIRED_SERVICES = {"postgres", "redis", "aws-standin", "airflow-init", *AIRFLOW_SERVICES}
STANDIN_STATE = "/opt/airflow/config/standin"
STANDIN_COMMAND = ["python", "-m", "local.standin", "--host", "0.0.0.0", "--port", "4566", "--state-dir", STANDIN_STATE]


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return value.split() if isinstance(value, str) else list(value)


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s#]+)", line.strip()):
            pins[match.group(1).lower()] = match.group(2)
    return pins


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> host path (or volume name) of each mount."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def test_services_are_all_there(services):
    assert set(services) >= REQUIRED_SERVICES


def test_long_running_services_have_health_checks(services):
    for name, service in services.items():
        if name == "airflow-init" or service.get("profiles"):
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test, f"{name} has no health check"
        assert test != ["NONE"], f"{name} disables its health check"
        assert service.get("restart") in {"always", "unless-stopped"}, name


def test_start_order(services):
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert services[dependency].get("healthcheck"), f"{dependency} has no health check"
            else:
                assert condition == "service_completed_successfully", (name, dependency, condition)
                assert dependency == "airflow-init"
    for name in AIRFLOW_SERVICES:
        depends = {k: v["condition"] for k, v in services[name]["depends_on"].items()}
        assert depends["postgres"] == depends["redis"] == "service_healthy", name
        assert depends["aws-standin"] == "service_healthy", name
        assert depends["airflow-init"] == "service_completed_successfully", name
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    init = services["airflow-init"]["depends_on"]
    assert {k: v["condition"] for k, v in init.items()} == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
    }


def test_images(services):
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"].startswith("redis:7.2")
    built = {name: services[name] for name in (*AIRFLOW_SERVICES, "airflow-init", "aws-standin")}
    for name, service in built.items():
        build = service.get("build")
        context = build.get("context") if isinstance(build, dict) else build
        assert context == ".", f"{name} is not built from ./Dockerfile"
    assert len({service["image"] for service in built.values()}) == 1, "one image for Airflow and stand-in"
    for name, service in services.items():
        assert "_PIP_ADDITIONAL_REQUIREMENTS" not in service.get("environment", {}), f"{name}: build the image"


def test_airflow_configuration(services):
    api_port = None
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__AUTH_MANAGER"] == (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        )
        assert re.fullmatch(r"\w+:admin(,\w+:\w+)*", env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"])
        assert env["PYTHONPATH"] == "/opt/airflow"
        execution = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        assert (execution.hostname, execution.path) == ("airflow-apiserver", "/execution/")
        api_port = execution.port
        assert urlsplit(env["AIRFLOW__API__BASE_URL"]).hostname in {"127.0.0.1", "localhost"}
        # Every component reads the one generated airflow.cfg (shared fernet key and JWT secret).
        assert env["AIRFLOW_CONFIG"].startswith("/opt/airflow/config/")
        assert "/opt/airflow/config" in _mounts(services[name]), name
    assert services["airflow-apiserver"]["command"] == "api-server"
    assert services["airflow-worker"]["command"] == "celery worker"
    assert services["airflow-init"]["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"
    assert api_port == 8080


def test_api_server_is_published_on_loopback_only(services):
    assert services["airflow-apiserver"]["ports"] == ["127.0.0.1:8080:8080"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_project_code_is_mounted(services):
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        mounts = _mounts(services[name])
        for folder in ("dags", "include", "plugins"):
            assert mounts.get(f"/opt/airflow/{folder}") == f"./{folder}", (name, folder)
    for folder in ("dags", "include", "plugins", "local"):
        assert (ROOT / folder).is_dir(), f"./{folder} is mounted but missing"


def test_aws_connection_points_at_the_standin_and_signs_with_its_generated_credentials(services):
    """The stand-in accepts only its state folder's credentials: airflow-init generates them in the config
    volume and writes aws_default with them; no service carries fixed keys."""
    standin = services["aws-standin"]
    argv = _as_list(standin.get("entrypoint")) + _as_list(standin.get("command"))
    assert argv == STANDIN_COMMAND
    port = int(argv[argv.index("--port") + 1])
    assert port in {int(p) for p in standin.get("expose", [])}
    assert _mounts(standin).get("/opt/airflow/local", "").startswith("./local")
    assert _mounts(standin)["/opt/airflow/config"] == "airflow-config"
    assert standin["user"] == services["airflow-scheduler"]["user"], "it reads the 0600 file airflow-init hands over"
    assert standin["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert standin["environment"]["PYTHONPATH"] == "/opt/airflow"
    assert f'credentials("{STANDIN_STATE}")' in " ".join(standin["healthcheck"]["test"])
    init = services["airflow-init"]["command"][-1]
    assert f'credentials("{STANDIN_STATE}")' in init
    assert "airflow connections add aws_default" in init
    assert f'"region_name": "{settings.LOCAL_REGION}"' in init
    [url] = re.findall(r'"endpoint_url": "([^"]+)"', init)
    assert (urlsplit(url).scheme, urlsplit(url).hostname, urlsplit(url).port) == ("http", "aws-standin", port)
    for name, service in services.items():
        assert "AIRFLOW_CONN_AWS_DEFAULT" not in service.get("environment", {}), name


def test_price_environment_agrees_with_settings(services):
    outputs = set(re.findall(r'^output "(PRICE_\w+)"', (ROOT / "terraform/outputs.tf").read_text(), re.M))
    assert outputs, "terraform/outputs.tf declares no PRICE_* output"
    for name in (*AIRFLOW_SERVICES, "airflow-init", "aws-standin"):
        env = services[name]["environment"]
        price = {k: str(v) for k, v in env.items() if k.startswith("PRICE_")}
        assert set(price) <= set(DEFAULTS), f"{name}: unknown settings {set(price) - set(DEFAULTS)}"
        # What Terraform decides on AWS, compose sets for the stand-in: the same names.
        assert set(price) >= outputs, f"{name} lacks {outputs - set(price)}"
        mismatched = {k: (v, DEFAULTS[k]) for k, v in price.items() if v != DEFAULTS[k]}
        assert not mismatched, f"{name}: (compose, settings default) differ: {mismatched}"


def test_compose_config_validates():
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        command = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        command = ["docker-compose"]
    else:
        pytest.skip("no docker compose client on this machine")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_dockerfile_builds_from_the_pinned_requirements():
    text = DOCKERFILE.read_text(encoding="utf-8")
    pins = _pins(ROOT / "requirements.txt")
    dev_pins = _pins(ROOT / "requirements-dev.txt")
    [base] = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert base == f"apache/airflow:{pins['apache-airflow']}-python3.11"
    install = " ".join(re.findall(r"^RUN\s+((?:.*\\\n)*.*)$", text, re.M)).replace("\\\n", " ")
    assert re.search(r"-r \S*requirements\.txt", install)
    assert re.search(r"-c \S*constraints\.txt", install)
    assert f'"moto[server]=={dev_pins["moto[server]"]}"' in install
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users, "no USER: pip would run as root"
    assert users[-1] == "airflow", "pip runs, and the image ends, as the airflow user"


def test_dockerignore_keeps_local_state_out_of_the_context():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv*", ".local"} <= ignored


def test_checkov_dockerfile():
    if not CHECKOV.exists():
        pytest.skip(f"{CHECKOV.relative_to(ROOT)} is missing (make install creates it)")
    result = subprocess.run(
        [str(CHECKOV), "-f", str(DOCKERFILE), "--framework", "dockerfile"]
        + ["--compact", "--quiet", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    failed = [f"{c['check_id']}: {c['check_name']}" for c in report.get("results", {}).get("failed_checks", [])]
    assert not failed, "\n".join(failed)
    assert report["summary"]["passed"] > 0

"""docker-compose.yaml is a valid Compose file describing the whole Airflow 3 stack."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_docker_compose_config_accepts_the_file() -> None:
    tool = shutil.which("docker-compose")
    assert tool, "Debian's docker-compose is needed to validate the file (.ci/setup.sh installs it)"
    result = subprocess.run([tool, "-f", str(ROOT / "docker-compose.yaml"), "config"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {
        "postgres",
        "redis",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "airflow-init",
    } <= set(services)
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-worker", "airflow-triggerer"):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW_CONN_FEATURE_STORE_DB"].endswith("/featurepipe")
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert {"published": 8080, "target": 8080} in services["airflow-apiserver"]["ports"]
    server, consumer = services["feature-server"], services["event-consumer"]
    assert server["entrypoint"] == ["feature-store"] and server["command"][0] == "serve"
    assert consumer["entrypoint"] == ["feature-store"] and consumer["command"] == ["events", "consume"]
    for service in (server, consumer):
        assert service["environment"]["FEATURE_STORE_REDIS_URL"] == "redis://redis:6379/1"
        assert service["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"

"""Registers featurepipe with Airflow: the job listener and the *Feature Store* and *Feature Monitoring* views."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow.plugins_manager import AirflowPlugin

# `tasks` (the task bodies and the feature store under them) is imported with the plugin: a process that
# loads the plugins and then forks its task processes (the scheduler, for its LocalExecutor workers; a Celery
# worker with [core] lazy_load_plugins = False, as in docker-compose.yaml) hands them over imported, where
# each task's own parse of the DAG file imported them again (~0.5 s of a core per task). A task process
# that loads the plugins itself imports them either way, for the DAG file.
from featurepipe_airflow import listener, tasks  # noqa: F401

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class ViewApp:
    """The views' FastAPI app (`featurepipe_airflow.view.app`), imported on its first request.

    Every Airflow process loads the plugins, each task's own process too (for the listener): importing
    the app there (FastAPI, Airflow's API security, which pulls in the API server) cost a Celery task
    0.6-1.2 s of its start, ten times its work. Only the API server serves the app; it imports it once.
    """

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        from featurepipe_airflow.view import app

        await app(scope, receive, send)


class FeaturePipePlugin(AirflowPlugin):
    name = "featurepipe"
    listeners = [listener]
    fastapi_apps = [{"app": ViewApp(), "url_prefix": "/featurepipe", "name": "featurepipe"}]
    external_views = [
        {
            "name": "Feature Store",
            "href": "featurepipe/",
            "url_route": "featurepipe",
            "destination": "nav",
            "category": "browse",
        },
        {
            "name": "Feature Monitoring",
            "href": "featurepipe/monitoring",
            "url_route": "featurepipe-monitoring",
            "destination": "nav",
            "category": "browse",
        },
    ]

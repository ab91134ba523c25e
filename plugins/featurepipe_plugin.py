"""Registers featurepipe with Airflow: the job listener and the *Feature Store* and *Feature Monitoring* views."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from featurepipe_airflow import listener
from featurepipe_airflow.view import app


class FeaturePipePlugin(AirflowPlugin):
    name = "featurepipe"
    listeners = [listener]
    fastapi_apps = [{"app": app, "url_prefix": "/featurepipe", "name": "featurepipe"}]
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

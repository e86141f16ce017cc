"""Airflow 3 plugin: the "Price alerts" page in the UI navigation and on each DAG run.

It mounts the page's FastAPI app at ``/price-alerts`` (``plugins/price_alerts/app.py``) and adds two
views the UI shows in an iframe: "Price alerts" in the navigation (default: the last 24 hours) and
"Price window" on a DAG run (the run's window and the hour around it). The app reads nothing when it is
built; every read happens when the page asks, behind the UI's login.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from price_alerts.app import create_app

URL_PREFIX = "/price-alerts"


class PriceAlertsPlugin(AirflowPlugin):
    name = "price_alerts"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Price alerts"}]
    external_views = [
        {
            "name": "Price alerts",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "price-alerts",
        },
        {
            "name": "Price window",
            "href": f"{URL_PREFIX}/?dag_id={{DAG_ID}}&run_id={{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "price-window",
        },
    ]

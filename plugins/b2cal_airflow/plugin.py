"""The b2cal Airflow plugin: its web pages, mounted in the API server and linked from the UI."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from b2cal_airflow.signoff_guard import guard_middleware
from b2cal_airflow.www.app import URL_PREFIX, create_app, root_middleware


class B2CalPlugin(AirflowPlugin):
    """Register the calibration pages with Airflow's API server and navigation."""

    name = "b2cal"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "b2cal calibration pages"}]
    fastapi_root_middlewares = [root_middleware(), guard_middleware()]
    external_views = [
        {
            "name": "Calibration requests",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "b2cal-requests",
            "nav_top_level": True,
            "icon": None,
        },
        {
            "name": "New calibration request",
            "href": f"{URL_PREFIX}/requests/new",
            "destination": "nav",
            "category": "b2cal",
            "url_route": "b2cal-new-request",
        },
        {
            "name": "Bucket durations",
            "href": f"{URL_PREFIX}/durations",
            "destination": "nav",
            "category": "b2cal",
            "url_route": "b2cal-durations",
        },
        {
            "name": "Calibration catalog",
            "href": f"{URL_PREFIX}/catalog",
            "destination": "nav",
            "category": "b2cal",
            "url_route": "b2cal-catalog",
        },
        {
            "name": "Calibration sites",
            "href": f"{URL_PREFIX}/sites",
            "destination": "nav",
            "category": "b2cal",
            "url_route": "b2cal-sites",
        },
        {
            "name": "Calibration docs",
            "href": f"{URL_PREFIX}/docs/index.html",
            "destination": "nav",
            "category": "docs",
            "url_route": "b2cal-docs",
        },
    ]

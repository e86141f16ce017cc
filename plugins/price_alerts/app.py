"""The FastAPI app of the "Price alerts" page, mounted by the Airflow API server at ``/price-alerts``.
Read-only GET routes behind the UI's login and read access to the price DAGs' runs (README "Price alerts
page"); S3 is read through the Airflow AWS connection when a page asks, never at import.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

STATIC = Path(__file__).resolve().parent / "static"
#: The only files the app serves, with their media types.
FILES = {
    "page.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
}
#: The DAGs whose runs the page links to; reading the page needs read access to their runs.
LIVE_DAG = "price_notification"
BULK_DAG = "price_history_backfill"
#: No remote source of any kind; the page runs in the UI's iframe (same origin).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'self'"
)
#: Context shown around the window of a run (the DAG run view).
RUN_CONTEXT_WINDOWS = 12


async def authenticated_user(request: Request):
    """The logged-in user, exactly as Airflow's API resolves it (401 without a token, 403 for a bad one)."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    return await get_user(request, None, await bearer_scheme(request))


def authorize(user) -> None:
    """403 unless ``user`` may read the runs of both price DAGs."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    manager = get_auth_manager()
    for dag_id in (LIVE_DAG, BULK_DAG):
        if not manager.is_authorized_dag(
            method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
        ):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")


async def current_user(request: Request):
    """The user for data: authenticated (else 401/403) and authorized (else 403)."""
    user = await authenticated_user(request)
    authorize(user)
    return user


async def page_user(request: Request):
    """The user for a page: without a valid login, the browser goes to the login page and back."""
    from airflow.api_fastapi.app import get_auth_manager

    try:
        user = await authenticated_user(request)
    except HTTPException as error:
        raise _LoginRequired(get_auth_manager().get_url_login(next_url=str(request.url))) from error
    authorize(user)
    return user


class _LoginRequired(Exception):
    def __init__(self, url: str):
        super().__init__(url)
        self.url = url


User = Annotated[object, Depends(current_user)]
PageUser = Annotated[object, Depends(page_user)]
Start = Annotated[str | None, Query(max_length=40)]
End = Annotated[str | None, Query(max_length=40)]
DagId = Annotated[str | None, Query(max_length=250)]
RunId = Annotated[str | None, Query(max_length=250)]
PairName = Annotated[str | None, Query(max_length=30)]


def create_app() -> FastAPI:
    """The app (no client, no read: those happen per request)."""
    app = FastAPI(title="Price alerts", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(_LoginRequired)
    async def to_login(_request: Request, error: _LoginRequired) -> Response:
        return RedirectResponse(error.url, status_code=status.HTTP_303_SEE_OTHER)

    @app.middleware("http")
    async def headers(request: Request, call_next) -> Response:
        if request.method not in ("GET", "HEAD"):
            return JSONResponse({"detail": "read-only"}, status_code=status.HTTP_405_METHOD_NOT_ALLOWED)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/", include_in_schema=False)
    def page(_user: PageUser) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str, _user: User) -> Response:
        if name not in FILES:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "Not found")
        return FileResponse(STATIC / name, media_type=FILES[name])

    @app.get("/api/history")
    def history(
        _user: User, start: Start = None, end: End = None, dag_id: DagId = None, run_id: RunId = None,
        pair: PairName = None,
    ):  # fmt: skip
        """The windows of ``[start, end)`` (default: the last 24 hours), or around one DAG run's window.
        Over a long range, rows marked ``pending`` are completed by ``/api/ledger`` for the same range.
        ``pair``: one of the rules file's pairs (default: the default pair)."""
        from include.price_pipeline import browse, settings

        first, last, focus = resolve_range(start, end, dag_id, run_id)
        config = load_config()
        rule_set = settings.load_rules(config)
        pairs = list(rule_set.pairs)
        if pair and pair not in pairs:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"pair must be one of {', '.join(pairs)}")
        data = browse.history(s3_client(config), config, rule_set, first, last, pair or "")
        data["pairs"] = pairs
        # Each rule as what it is: a change rule's threshold band, a crossing rule's level line.
        pair_rules = rule_set.pairs[data["pair"]]
        data["rules"] = [{"rule": r.name, "kind": r.kind, "threshold_pct": r.threshold_pct, "level": r.level}
                         for r in pair_rules]  # fmt: skip
        data["threshold_pct"] = next((r.threshold_pct for r in pair_rules if r.kind == "change"), None)
        links = run_links(first, last, [row["window_start"] for row in data["windows"]])
        for row in data["windows"]:
            row["run_url"] = links.get(row["window_start"])
        data["focus"] = {"start": focus[0], "end": focus[1]} if focus else None
        data["incidents"] = browse.incidents(s3_client(config), config)
        return json_response(data)

    @app.get("/api/ledger")
    def ledger(_user: User, start: Start = None, end: End = None, dag_id: DagId = None, run_id: RunId = None,
               pair: PairName = None):  # fmt: skip
        """The ledger entries of the rows ``/api/history`` left ``pending`` for the same range and pair."""
        from include.price_pipeline import browse, settings

        first, last, _focus = resolve_range(start, end, dag_id, run_id)
        config = load_config()
        rule_set = settings.load_rules(config)
        if pair and pair not in rule_set.pairs:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"pair must be one of {', '.join(rule_set.pairs)}")
        rows = browse.ledger_details(s3_client(config), config, rule_set, first, last, pair or "")
        links = run_links(first, last, [row["window_start"] for row in rows])
        for row in rows:
            row["run_url"] = links.get(row["window_start"])
        return json_response({"windows": rows})

    return app


def load_config():
    from include.price_pipeline import settings

    return settings.load()


def s3_client(config):
    """S3 through the Airflow AWS connection (the same code path on the stand-in and on AWS)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=config.aws_conn_id).get_conn()


def json_response(data: dict) -> Response:
    # Plain json.dumps: a month of rows through FastAPI's generic encoder costs more than reading them.
    return Response(json.dumps(data, separators=(",", ":")), media_type="application/json")


def resolve_range(
    start: str | None, end: str | None, dag_id: str | None, run_id: str | None
) -> tuple[datetime, datetime, tuple[str, str] | None]:
    """``(first, last, focus)``: the range asked for, or the window of a run with some context around it."""
    from include.price_pipeline import browse, layout

    focus = None
    if run_id and dag_id:
        focus = run_range(dag_id, run_id)
        if focus is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "No such run with a window of this pipeline")
        start, end = focus
    try:
        first, last = browse.parse_range(start, end, datetime.now(UTC))
    except ValueError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from error
    if focus is not None and last - first <= layout.SLOT * 2:
        first, last = first - layout.SLOT * RUN_CONTEXT_WINDOWS, last + layout.SLOT * RUN_CONTEXT_WINDOWS
    return first, last, focus


def run_url(dag_id: str, run_id: str) -> str:
    """The run's page in the Airflow UI (a path: the page is served by the same server)."""
    return f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def run_links(first: datetime, last: datetime, windows: list[str]) -> dict[str, str]:
    """``{window start: run page}`` of ``windows`` (ISO starts in ``[first, last)``): the live DAG's run of
    each window (the latest if it ran more than once), else the latest bulk run whose range holds it."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from include.price_pipeline import layout

    with create_session() as session:
        bulk = session.execute(
            select(DagRun.run_id, DagRun.conf).where(DagRun.dag_id == BULK_DAG).order_by(DagRun.id.desc())
        ).all()
        live = session.execute(
            select(DagRun.run_id, DagRun.data_interval_start)
            .where(DagRun.dag_id == LIVE_DAG)
            .where(DagRun.data_interval_start >= first)
            .where(DagRun.data_interval_start < last)
            .order_by(DagRun.id)
        ).all()
    live_links = {layout.iso(interval_start): run_url(LIVE_DAG, live_run_id) for live_run_id, interval_start in live}
    spans = [(span, bulk_run_id) for bulk_run_id, conf in bulk
             if (span := _bulk_span(conf)) and span[0] < last and span[1] > first]  # fmt: skip
    links = {}
    for window in windows:
        if window in live_links:
            links[window] = live_links[window]
        elif spans:
            slot = layout.parse_iso(window)
            run = next((run_id for span, run_id in spans if span[0] <= slot < span[1]), None)
            if run is not None:
                links[window] = run_url(BULK_DAG, run)
    return links


def _bulk_span(conf) -> tuple[datetime, datetime] | None:
    from include.price_pipeline import history

    try:
        return history.parse_window_start(conf["start"]), history.parse_window_start(conf["end"])
    except (KeyError, TypeError, ValueError):
        return None


def run_range(dag_id: str, run_id: str) -> tuple[str, str] | None:
    """The window (live DAG) or range (bulk DAG) of a run, as ISO texts; None for any other run."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from include.price_pipeline import layout

    with create_session() as session:
        found = session.execute(
            select(DagRun.data_interval_start, DagRun.data_interval_end, DagRun.conf).where(
                DagRun.dag_id == dag_id, DagRun.run_id == run_id
            )
        ).first()
    if found is None:
        return None
    interval_start, interval_end, conf = found
    if dag_id == LIVE_DAG and interval_start is not None:
        return layout.iso(interval_start), layout.iso(interval_end)
    if dag_id == BULK_DAG and (span := _bulk_span(conf)):
        return layout.iso(span[0]), layout.iso(span[1])
    return None

"""Serve a generated run registry for local development and tests, and write the site storage tree.

The run list is generated from a seed, so the same configuration always gives the same runs. Each
experiment starts with cosmic runs, then mixes mostly physics runs with beam, debug, a few cosmic
and unclassified (``null``) runs. Runs last 1 to 8 hours and follow each other with gaps of minutes
to days, and experiments follow each other without overlapping in time. Physics runs are mostly
taken at the Υ(4S) energy, with a continuum block and a short energy scan. Quality flags are mostly
GOOD. Each run lists the calibration skims (data tags) produced from it.

``GET /rest/v1/runs/`` responds like the Django REST framework service: paginated with ``page`` and
``page_size``, ``{"count", "next", "previous", "results"}``, with ``next`` and ``previous`` as
absolute URLs or ``null``, and errors as ``{"detail": ...}`` or ``{field: [message]}``. Requests need
the header ``Authorization: Api-Key <key>``.

Development endpoints: ``GET /_dev/state``, ``POST /_dev/reset`` (regenerate), ``POST /_dev/runs``
(``{"count": n}`` appends new physics runs, as if data taking went on), ``PATCH
/_dev/runs/{exp}/{run}`` (changes fields of a run, as an upstream correction does), ``DELETE
/_dev/runs/{exp}/{run}`` (removes a run from the list) and ``POST /_dev/faults``.
"""

from __future__ import annotations

import hmac
import logging
import random
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from b2cal.devservices.common import FaultInjector, base_url_of, install_request_logging, set_log_ids
from b2cal.devservices.config import DevServicesConfig, catalog_data_tags

__all__ = [
    "DETECTORS",
    "RUN_TYPES",
    "RunRegistryState",
    "create_app",
    "generate_runs",
    "write_storage_tree",
]

logger = logging.getLogger(__name__)

RUNS_PATH = "/rest/v1/runs/"
DETECTORS = ("PXD", "SVD", "CDC", "TOP", "ARICH", "ECL", "KLM", "TRG")
RUN_TYPES = ("physics", "cosmic", "beam", "debug", "null")
QUALITY_FLAGS = ("GOOD", "RECOVERABLE", "BAD", "NOTSET")
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
FILTERS = (
    "min_experiment",
    "max_experiment",
    "min_run",
    "max_run",
    "min_date",
    "max_date",
    "run_type",
    "all_detectors_running",
    "expand",
)
_FIRST_EXPERIMENT_START = datetime(2024, 1, 8, tzinfo=UTC)

#: Probability of each run type after an experiment's opening cosmic runs.
_RUN_TYPE_WEIGHTS = {"physics": 0.82, "beam": 0.07, "debug": 0.05, "cosmic": 0.04, "null": 0.02}
#: Probability of each quality flag of an included detector, per run type.
_QUALITY_WEIGHTS = {
    "physics": (0.93, 0.04, 0.02, 0.01),
    "beam": (0.80, 0.08, 0.04, 0.08),
    "cosmic": (0.85, 0.03, 0.02, 0.10),
    "debug": (0.30, 0.00, 0.00, 0.70),
    "null": (0.00, 0.00, 0.00, 1.00),
}
#: Probability that a physics run produced a skim; skims not listed here get the default.
_PHYSICS_SKIM_PROBABILITY = {
    "hadron_calib": 0.98,
    "bhabha_all_calib": 0.98,
    "mumu_tight_or_highm_calib": 0.98,
    "delayedbhabha_calib": 0.6,
}
_DEFAULT_SKIM_PROBABILITY = 0.9
#: Recorded luminosity per hour of a physics run at the 4S energy, in pb^-1 (a plausible range).
_LUMINOSITY_PER_HOUR = (25.0, 45.0)


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _worst_flag(flags: Iterable[str]) -> str:
    present = set(flags)
    for flag in ("BAD", "RECOVERABLE", "NOTSET"):
        if flag in present:
            return flag
    return "GOOD"


def _physics_skims(data_tags: Iterable[str]) -> list[str]:
    # Physics runs carry cosmic triggers too, and the single-photon simulation is produced per run.
    return list(data_tags)


def _make_run(
    rng: random.Random,
    experiment: int,
    run: int,
    start: datetime,
    run_type: str,
    beam_energy: str,
    data_tags: tuple[str, ...],
) -> dict[str, Any]:
    """Generate one run record of the given type."""
    if run_type == "debug":
        hours = rng.uniform(1.0, 2.0)
    elif run_type == "cosmic":
        hours = rng.uniform(2.0, 8.0)
    else:
        hours = rng.uniform(1.0, 8.0)
    stop = start + timedelta(seconds=round(hours * 3600))

    detectors = list(DETECTORS)
    if run_type != "null" and rng.random() < 0.1:
        detectors.remove("PXD" if rng.random() < 0.5 else rng.choice(DETECTORS))
    quality = {}
    for detector in DETECTORS:
        if detector in detectors:
            quality[detector] = rng.choices(QUALITY_FLAGS, weights=_QUALITY_WEIGHTS[run_type])[0]
        else:
            quality[detector] = "NOTSET"
    quality["overall"] = _worst_flag(quality[detector] for detector in detectors)

    if run_type == "physics":
        shifter = rng.choices(("GOOD", "RECOVERABLE", "BAD"), weights=(0.95, 0.03, 0.02))[0]
    elif run_type in ("beam", "cosmic"):
        shifter = rng.choices(("GOOD", "NOTSET"), weights=(0.8, 0.2))[0]
    else:
        shifter = "NOTSET"

    if run_type == "physics":
        rate = rng.uniform(*_LUMINOSITY_PER_HOUR) * (0.5 if beam_energy == "Scan" else 1.0)
        luminosity = round(hours * rate, 3)
    elif run_type == "beam":
        luminosity = round(hours * rng.uniform(0.0, 2.0), 3)
    else:
        luminosity = 0.0

    if run_type == "cosmic":
        solenoid = "On" if rng.random() < 0.6 else "Off"
    elif run_type == "debug":
        solenoid = "On" if rng.random() < 0.9 else "Off"
    else:
        solenoid = "On"

    skims: list[str] = []
    if run_type == "cosmic" and "cosmic_calib" in data_tags and rng.random() < 0.95:
        skims = ["cosmic_calib"]
    elif run_type == "physics":
        skims = [
            tag
            for tag in _physics_skims(data_tags)
            if rng.random() < _PHYSICS_SKIM_PROBABILITY.get(tag, _DEFAULT_SKIM_PROBABILITY)
        ]
    elif run_type == "beam":
        skims = [tag for tag in ("random_calib", "offip_calib") if tag in data_tags and rng.random() < 0.7]
    elif run_type == "debug" and "random_calib" in data_tags and rng.random() < 0.3:
        skims = ["random_calib"]

    return {
        "experiment": experiment,
        "run": run,
        "start_time": _iso(start),
        "stop_time": _iso(stop),
        "run_type": run_type,
        "all_detectors_running": len(detectors) == len(DETECTORS),
        "detectors": detectors,
        "solenoid_field": solenoid,
        "beam_energy": beam_energy,
        "quality": quality,
        "shifter_quality": shifter,
        "recorded_luminosity": luminosity,
        "skims": skims,
    }


def _gap(rng: random.Random) -> timedelta:
    """Return the pause before the next run: minutes usually, hours or days during downtime."""
    roll = rng.random()
    if roll < 0.03:
        return timedelta(hours=rng.uniform(24.0, 72.0))
    if roll < 0.13:
        return timedelta(hours=rng.uniform(2.0, 12.0))
    return timedelta(minutes=rng.uniform(5.0, 40.0))


def _next_run_number(rng: random.Random, run: int) -> int:
    """Return the next recorded run number; aborted runs leave holes in the numbering."""
    return run + (1 if rng.random() < 0.92 else rng.randint(2, 4))


def _beam_energy(run_type: str, position: float, rng: random.Random) -> str:
    """Return the beam energy of a run at ``position`` (0 to 1) through its experiment."""
    if run_type == "cosmic":
        return "No Beam"
    if run_type == "debug":
        return "No Beam" if rng.random() < 0.7 else "4S"
    if run_type == "null":
        return ""
    if run_type == "physics" and 0.55 <= position < 0.65:
        return "Continuum"
    if run_type == "physics" and 0.80 <= position < 0.82:
        return "Scan"
    return "4S"


def generate_runs(
    seed: int = 2024,
    experiments: Iterable[int] = (24, 25, 26),
    runs_per_experiment: int = 120,
    data_tags: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Generate a deterministic run list, ordered by experiment and run.

    :param seed: random seed. Each experiment has its own generator seeded from it, so appending an
        experiment leaves the runs of the earlier ones unchanged.
    :param experiments: experiment numbers in time order
    :param runs_per_experiment: number of runs per experiment
    :param data_tags: skim vocabulary, the ``Data Tag`` filters of the packaged catalogs by default
    """
    tags = tuple(data_tags) if data_tags is not None else catalog_data_tags()
    runs: list[dict[str, Any]] = []
    start = _FIRST_EXPERIMENT_START
    for experiment in experiments:
        rng = random.Random(f"b2cal-runs-{seed}-{experiment}")
        start += timedelta(hours=rng.uniform(0.0, 48.0))
        opening_cosmics = max(2, runs_per_experiment // 12)
        run = 0
        for index in range(runs_per_experiment):
            if index < opening_cosmics:
                run_type = "cosmic"
            else:
                run_type = rng.choices(list(_RUN_TYPE_WEIGHTS), weights=list(_RUN_TYPE_WEIGHTS.values()))[0]
            beam_energy = _beam_energy(run_type, index / runs_per_experiment, rng)
            record = _make_run(rng, experiment, run, start, run_type, beam_energy, tags)
            if run_type == "physics" and 0.30 <= index / runs_per_experiment < 0.36:
                # Each experiment has a short block of physics runs with the solenoid off, for alignment.
                record["solenoid_field"] = "Off"
            runs.append(record)
            start = datetime.fromisoformat(record["stop_time"]) + _gap(rng)
            run = _next_run_number(rng, run)
        start += timedelta(days=rng.uniform(14.0, 42.0))
    return runs


RAW_DATA_TAG = "raw"


def write_storage_tree(runs: Iterable[Mapping[str, Any]], root: Path, files_per_skim: int = 2) -> int:
    """Create a placeholder file tree for every run and skim, laid out like a site's calibration storage.

    The layout is ``<root>/<data_tag>/e{exp:04d}/r{run:05d}/<data_tag>_e{exp:04d}_r{run:05d}_{n}.root``
    with ``n`` from 1 to ``files_per_skim``; the full raw data of every run lies in the same layout
    under the tag ``raw``. Existing files are left untouched, so calling it again is cheap and
    changes nothing.

    :returns: the number of files created by this call
    """
    if files_per_skim < 1:
        raise ValueError(f"files_per_skim is {files_per_skim}, expected at least 1")
    root = Path(root)
    created = 0
    for record in runs:
        experiment = int(record["experiment"])
        run = int(record["run"])
        for tag in [RAW_DATA_TAG, *record.get("skims", [])]:
            stem = f"{tag}_e{experiment:04d}_r{run:05d}"
            folder = root / tag / f"e{experiment:04d}" / f"r{run:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(1, files_per_skim + 1):
                path = folder / f"{stem}_{number}.root"
                try:
                    with open(path, "xb") as handle:
                        handle.write(f"b2cal placeholder for {stem} file {number}\n".encode())
                except FileExistsError:
                    continue
                created += 1
    return created


class RegistryHTTPError(Exception):
    """An error response in Django REST framework style: ``{"detail": ...}`` or ``{field: [...]}``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body


class RunRegistryState:
    """The generated run list of the development run registry."""

    def __init__(self, config: DevServicesConfig) -> None:
        self.config = config
        self.base_url: str | None = None
        self.faults = FaultInjector()
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Regenerate the run list from the configured seed and re-plan the configured failures."""
        runs = generate_runs(self.config.seed, self.config.experiments, self.config.runs_per_experiment)
        with self._lock:
            self._runs = runs
            self._appended = 0
        self.faults.clear()
        self.faults.fail_next(self.config.runregistry_failures, 503, RUNS_PATH)

    def _generation(self) -> dict[str, Any]:
        return {
            "seed": self.config.seed,
            "experiments": list(self.config.experiments),
            "runs_per_experiment": self.config.runs_per_experiment,
        }

    def export_state(self) -> dict[str, Any]:
        """Return the run list, with the settings it was generated from, as JSON-compatible data."""
        with self._lock:
            return {"generation": self._generation(), "runs": list(self._runs)}

    def restore_state(self, data: dict[str, Any]) -> bool:
        """Replace the run list with what :meth:`export_state` saved; return whether it did.

        A list generated from another seed, other experiments or another number of runs per
        experiment is left out, so the newly generated list of the configured settings stays.

        :raises KeyError, TypeError, ValueError: when the data is incomplete
        """
        if data["generation"] != self._generation():
            logger.warning(
                "The saved run list was generated with %s, but the configuration asks for %s; "
                "using a newly generated run list",
                data["generation"],
                self._generation(),
            )
            return False
        runs = [dict(record) for record in data["runs"]]
        for record in runs:
            if not isinstance(record.get("experiment"), int) or not isinstance(record.get("run"), int):
                raise ValueError(f"a saved run has no integer experiment and run number: {record}")
        with self._lock:
            self._runs = runs
        return True

    @property
    def runs(self) -> list[dict[str, Any]]:
        """A copy of the run list, ordered by experiment and run."""
        with self._lock:
            return list(self._runs)

    def append_runs(self, count: int) -> list[dict[str, Any]]:
        """Append ``count`` new runs to the last experiment, as if data taking went on."""
        if count < 1:
            raise ValueError(f"count is {count}, expected at least 1")
        with self._lock:
            rng = random.Random(f"b2cal-more-runs-{self.config.seed}-{len(self._runs)}")
            last = self._runs[-1]
            tags = catalog_data_tags()
            new = []
            for _ in range(count):
                start = datetime.fromisoformat(last["stop_time"]) + _gap(rng)
                run_type = rng.choices(list(_RUN_TYPE_WEIGHTS), weights=list(_RUN_TYPE_WEIGHTS.values()))[0]
                record = _make_run(
                    rng,
                    last["experiment"],
                    _next_run_number(rng, last["run"]),
                    start,
                    run_type,
                    _beam_energy(run_type, 0.0, rng),
                    tags,
                )
                new.append(record)
                last = record
            self._runs.extend(new)
            return new

    def update_run(self, experiment: int, run: int, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change fields of one run, as when the run registry corrects a record after data taking.

        :raises KeyError: when the run does not exist
        :raises ValueError: when ``changes`` names ``experiment``, ``run`` or an unknown field
        """
        with self._lock:
            index = self._index(experiment, run)
            record = self._runs[index]
            unknown = sorted(set(changes) - set(record))
            fixed = sorted(set(changes) & {"experiment", "run"})
            if unknown or fixed:
                raise ValueError(
                    f"cannot change {', '.join(unknown + fixed)} of run e{experiment} r{run}; "
                    f"change any of {', '.join(sorted(set(record) - {'experiment', 'run'}))}"
                )
            updated = {**record, **changes}
            self._runs[index] = updated
            return dict(updated)

    def remove_run(self, experiment: int, run: int) -> dict[str, Any]:
        """Remove one run from the list, as when the registry drops a run entered by mistake.

        :raises KeyError: when the run does not exist
        """
        with self._lock:
            return self._runs.pop(self._index(experiment, run))

    def _index(self, experiment: int, run: int) -> int:
        for index, record in enumerate(self._runs):
            if record["experiment"] == experiment and record["run"] == run:
                return index
        raise KeyError(f"run e{experiment} r{run} is not in the development run registry")

    def select(self, filters: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Return the runs matching already validated filters."""
        selected = []
        for record in self.runs:
            if not _run_matches(record, filters):
                continue
            if filters.get("expand"):
                record = {**record, "detector_status": _detector_status(record)}
            selected.append(record)
        return selected


def _detector_status(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "detector": detector,
            "included": detector in record["detectors"],
            "quality": record["quality"][detector],
        }
        for detector in DETECTORS
    ]


def _run_matches(record: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    checks = (
        ("min_experiment", lambda value: record["experiment"] >= value),
        ("max_experiment", lambda value: record["experiment"] <= value),
        ("min_run", lambda value: record["run"] >= value),
        ("max_run", lambda value: record["run"] <= value),
        ("run_type", lambda value: record["run_type"] == value),
        ("all_detectors_running", lambda value: record["all_detectors_running"] is value),
        ("min_date", lambda value: _compare_start(record, value) >= 0),
        ("max_date", lambda value: _compare_start(record, value) <= 0),
    )
    return all(filters.get(name) is None or check(filters[name]) for name, check in checks)


def _compare_start(record: Mapping[str, Any], limit: date | datetime) -> int:
    """Compare a run's start with a date (by calendar day, UTC) or a time: -1, 0 or 1."""
    start = datetime.fromisoformat(record["start_time"])
    left: date | datetime = start if isinstance(limit, datetime) else start.date()
    return (left > limit) - (left < limit)  # type: ignore[operator]


def _parse_boolean(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise RegistryHTTPError(400, {name: [f"'{text}' is not a valid boolean: use true or false."]})


def _parse_date(name: str, text: str) -> date | datetime:
    try:
        if "T" not in text and len(text) == 10:
            return date.fromisoformat(text)
        value = datetime.fromisoformat(text)
    except ValueError:
        raise RegistryHTTPError(
            400, {name: [f"'{text}' is not a valid date: use YYYY-MM-DD or an ISO 8601 date and time."]}
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_filters(parameters: Mapping[str, str]) -> tuple[dict[str, Any], int, int]:
    """Validate the query parameters of a run list request.

    :returns: the filters, the page number and the page size
    :raises RegistryHTTPError: with status 400 for an unknown parameter or an invalid value
    """
    unknown = sorted(set(parameters) - set(FILTERS) - {"page", "page_size"})
    if unknown:
        # NOTE: the Django REST framework service ignores unknown parameters; rejecting them here
        # catches misspelled filters early.
        raise RegistryHTTPError(
            400,
            {
                "detail": f"Unknown query parameter(s) {', '.join(unknown)}; "
                f"valid: {', '.join(FILTERS)}, page, page_size."
            },
        )
    filters: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for name, text in parameters.items():
        try:
            if name in ("min_experiment", "max_experiment", "min_run", "max_run", "page", "page_size"):
                try:
                    filters[name] = int(text)
                except ValueError:
                    raise RegistryHTTPError(400, {name: ["A valid integer is required."]}) from None
            elif name in ("min_date", "max_date"):
                filters[name] = _parse_date(name, text)
            elif name in ("all_detectors_running", "expand"):
                filters[name] = _parse_boolean(name, text)
            elif name == "run_type":
                if text not in RUN_TYPES:
                    raise RegistryHTTPError(
                        400,
                        {name: [f"Select a valid choice. '{text}' is not one of {', '.join(RUN_TYPES)}."]},
                    )
                filters[name] = text
        except RegistryHTTPError as error:
            errors.update(error.body)
    if errors:
        raise RegistryHTTPError(400, errors)
    page = filters.pop("page", 1)
    page_size = filters.pop("page_size", DEFAULT_PAGE_SIZE)
    if page_size < 1 or page_size > MAX_PAGE_SIZE:
        raise RegistryHTTPError(400, {"page_size": [f"Ensure this value is between 1 and {MAX_PAGE_SIZE}."]})
    return filters, page, page_size


def create_app(state: RunRegistryState) -> FastAPI:
    """Build the FastAPI application of the development run registry around ``state``."""
    app = FastAPI(title="b2cal development run registry", docs_url=None, redoc_url=None)
    install_request_logging(app, logger, state.faults)

    @app.exception_handler(RegistryHTTPError)
    async def registry_error(request: Request, error: RegistryHTTPError) -> JSONResponse:
        return JSONResponse(error.body, status_code=error.status)

    def require_api_key(request: Request) -> None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme != "Api-Key" or not key:
            raise RegistryHTTPError(401, {"detail": "Authentication credentials were not provided."})
        if not hmac.compare_digest(key.strip(), state.config.runregistry_api_key):
            raise RegistryHTTPError(401, {"detail": "Invalid API key."})

    @app.get(RUNS_PATH)
    async def list_runs(request: Request) -> dict[str, Any]:
        require_api_key(request)
        parameters = dict(request.query_params)
        filters, page, page_size = parse_filters(parameters)
        selected = state.select(filters)
        pages = max(1, -(-len(selected) // page_size))
        if page < 1 or page > pages:
            raise RegistryHTTPError(404, {"detail": "Invalid page."})
        results = selected[(page - 1) * page_size : page * page_size]
        url = f"{base_url_of(request, state.base_url)}{RUNS_PATH}"

        def page_url(number: int) -> str:
            return f"{url}?{urlencode({**parameters, 'page': number})}"

        if results:
            first, last = results[0], results[-1]
            span = f"e{first['experiment']}r{first['run']}..e{last['experiment']}r{last['run']}"
        else:
            span = "none"
        set_log_ids(request, f"count={len(selected)} page={page}/{pages} runs={span}")
        return {
            "count": len(selected),
            "next": page_url(page + 1) if page < pages else None,
            "previous": page_url(page - 1) if page > 1 else None,
            "results": results,
        }

    @app.get("/_dev/state")
    async def dev_state() -> dict[str, Any]:
        experiments: dict[str, dict[str, Any]] = {}
        for record in state.runs:
            summary = experiments.setdefault(
                str(record["experiment"]), {"runs": 0, "first_run": record["run"], "recorded_luminosity": 0.0}
            )
            summary["runs"] += 1
            summary["last_run"] = record["run"]
            summary["recorded_luminosity"] = round(
                summary["recorded_luminosity"] + record["recorded_luminosity"], 3
            )
        return {"count": len(state.runs), "experiments": experiments, "pending_faults": state.faults.pending}

    @app.post("/_dev/reset", status_code=204)
    async def dev_reset() -> Response:
        state.reset()
        logger.info("Run registry reset: run list regenerated from seed %s", state.config.seed)
        return Response(status_code=204)

    @app.post("/_dev/runs", status_code=201)
    async def dev_append(request: Request) -> list[dict[str, Any]]:
        body = await request.json() if await request.body() else {}
        try:
            new = state.append_runs(int(body.get("count", 1)))
        except (TypeError, ValueError) as error:
            raise RegistryHTTPError(400, {"count": [str(error)]}) from None
        set_log_ids(request, f"appended={len(new)} last=e{new[-1]['experiment']}r{new[-1]['run']}")
        return new

    @app.patch("/_dev/runs/{experiment}/{run}")
    async def dev_update(request: Request, experiment: int, run: int) -> dict[str, Any]:
        body = await request.json() if await request.body() else {}
        if not isinstance(body, dict):
            raise RegistryHTTPError(400, {"detail": "Send a JSON object of the fields to change."})
        try:
            updated = state.update_run(experiment, run, body)
        except KeyError as error:
            raise RegistryHTTPError(404, {"detail": str(error.args[0])}) from None
        except ValueError as error:
            raise RegistryHTTPError(400, {"detail": str(error)}) from None
        set_log_ids(request, f"changed=e{experiment}r{run} fields={','.join(sorted(body))}")
        return updated

    @app.delete("/_dev/runs/{experiment}/{run}", status_code=204)
    async def dev_remove(request: Request, experiment: int, run: int) -> Response:
        try:
            state.remove_run(experiment, run)
        except KeyError as error:
            raise RegistryHTTPError(404, {"detail": str(error.args[0])}) from None
        set_log_ids(request, f"removed=e{experiment}r{run}")
        return Response(status_code=204)

    @app.post("/_dev/faults", status_code=204)
    async def dev_faults(request: Request) -> Response:
        body = await request.json() if await request.body() else {}
        try:
            state.faults.fail_next(
                int(body.get("count", 1)),
                int(body.get("status", 503)),
                str(body.get("path_prefix", RUNS_PATH)),
            )
        except (TypeError, ValueError) as error:
            raise RegistryHTTPError(400, {"detail": str(error)}) from None
        return Response(status_code=204)

    return app

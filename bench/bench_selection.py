"""Benchmark input selection for a large bucket against a naive per-file filter.

Run from the repository root after ``make test`` has created ``.venv``::

    .venv/bin/python bench/bench_selection.py

The bucket has 500 runs generated like the development run registry's (experiment 26) and a site
that has 100 files per run for each of the catalog's 12 skims (600,000 skim files) plus 100 raw
files per run (50,000 more, for the inputs that read raw data), each with an event count.

Measured in the same run:

* the candidate: :func:`b2cal.runs.select_inputs` for every calibration of the packaged catalog,
  without caps and with ``expert_config`` caps, best of three;
* the baseline: for each input, one pass over every file entry of the site that checks the file's
  data tag and evaluates the run's filters for that file, as a selection without a per-run funnel
  would; it runs on three calibrations only (nine inputs), because over the whole catalog it takes
  minutes, and the candidate is timed on the same three;
* memory: the peak of Python allocations during the whole-catalog selection (tracemalloc) and the
  process's peak resident set size.

Both ways must pick the same files. The last line printed is one JSON object.
"""

from __future__ import annotations

import json
import random
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from b2cal.catalog import NOT_PREFIX, Catalog, load_packaged_release  # noqa: E402
from b2cal.devservices.runregistry import generate_runs  # noqa: E402
from b2cal.filesources import FileEntry, StaticFileSource  # noqa: E402
from b2cal.iov import IoV  # noqa: E402
from b2cal.runs import RAW_DATA_TAG, EmptyInputError, InputSelection, Run, RunFilter, select_inputs  # noqa: E402

RUNS = 500
FILES_PER_RUN = 100
BUCKET = IoV(26, 0, 26, -1)
COMPARED = ("CDC Tracking", "KLM channel status", "eCMS Calibrations")
CAPS = {"min_events_per_file": 200, "max_files_per_run": 40, "max_events_per_run": 30_000}
TARGET_SECONDS = 2.0
TARGET_MB = 500.0


def _log(message: str) -> None:
    print(f"[bench_selection {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_bucket(catalog: Catalog) -> tuple[list[Run], dict[tuple[str, tuple[int, int]], list[FileEntry]]]:
    """Return the bucket's runs and the site's files: every skim and the raw data for every run."""
    records = generate_runs(seed=11, experiments=(26,), runs_per_experiment=RUNS)
    runs = [Run.from_registry(record) for record in records]
    rng = random.Random(11)
    files: dict[tuple[str, tuple[int, int]], list[FileEntry]] = {}
    for run in runs:
        for tag in [RAW_DATA_TAG, *catalog.vocabulary["Data Tag"]]:
            folder = f"/storage/bnl/{tag}/e{run.experiment:04d}/r{run.run:05d}"
            files[(tag, run.key)] = [
                FileEntry(
                    f"{folder}/{tag}_e{run.experiment:04d}_r{run.run:05d}_{index:03d}.root",
                    rng.randint(0, 2000),
                )
                for index in range(FILES_PER_RUN)
            ]
    return runs, files


def candidate(
    catalog: Catalog,
    names: list[str],
    runs: list[Run],
    source: StaticFileSource,
    caps: Mapping[str, Any] | None,
) -> dict[str, dict[str, InputSelection]]:
    """Select the inputs of ``names`` with :func:`select_inputs`; an empty input counts as no files."""
    result = {}
    for name in names:
        try:
            result[name] = select_inputs(
                catalog[name], runs, BUCKET, catalog.vocabulary, source, expert_config=caps
            )
        except EmptyInputError:
            result[name] = {}
    return result


def baseline(
    catalog: Catalog,
    names: list[str],
    runs: list[Run],
    files: Mapping[tuple[str, tuple[int, int]], list[FileEntry]],
) -> dict[str, dict[str, list[tuple[str, tuple[int, int]]]]]:
    """Filter file by file: for each input, walk every file of the site and test its tag and its run."""
    run_of = {run.key: run for run in runs}
    held: dict[tuple[int, int], set[str]] = {}
    for tag, key in files:
        held.setdefault(key, set()).add(tag)
    result: dict[str, dict[str, list[tuple[str, tuple[int, int]]]]] = {}
    for name in names:
        settings = catalog[name]
        result[name] = {}
        for input_name in settings.input_data_names:
            values = settings.input_data_filters.get(input_name, ())
            run_filter = RunFilter(values, catalog.vocabulary)
            excluded = {value[len(NOT_PREFIX) :] for value in values if value.startswith(NOT_PREFIX)}
            wanted = [tag for tag in run_filter.data_tags if tag not in excluded] or [RAW_DATA_TAG]
            chosen = []
            for (tag, key), entries in files.items():
                for entry in entries:
                    run = run_of[key]
                    if tag in wanted and BUCKET.contains(*key) and run_filter.accepts(run, held[key]):
                        chosen.append((entry.path, key))
            # The candidate lists files run by run, in the order of the input's data tags.
            order = {tag: index for index, tag in enumerate(wanted)}
            chosen.sort(key=lambda item: (item[1], order[item[0].split("/")[3]], item[0]))
            result[name][input_name] = chosen
    return result


def timed(function: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> int:
    catalog = load_packaged_release()
    _log(f"generating {RUNS} runs with {FILES_PER_RUN} files per run for 12 skims and the raw data")
    runs, files = build_bucket(catalog)
    source = StaticFileSource(files, "benchmark site")
    entries = sum(len(items) for items in files.values())
    names = catalog.names

    _log("candidate over the whole catalog")
    whole, selections = timed(lambda: candidate(catalog, names, runs, source, None), repeat=3)
    capped, _ = timed(lambda: candidate(catalog, names, runs, source, CAPS), repeat=3)
    inputs = sum(len(item) for item in selections.values())
    selected_files = sum(len(s.files) for item in selections.values() for s in item.values())

    tracemalloc.start()
    candidate(catalog, names, runs, source, CAPS)
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    _log(f"candidate and baseline on {', '.join(COMPARED)}")
    subset = list(COMPARED)
    candidate_subset, chosen = timed(lambda: candidate(catalog, subset, runs, source, None), repeat=3)
    baseline_subset, expected = timed(lambda: baseline(catalog, subset, runs, files))
    for name in subset:
        got = {input_name: selection.files for input_name, selection in chosen[name].items()}
        if got != expected[name]:
            _log(f"MISMATCH for {name}")
            return 1
    subset_inputs = sum(len(catalog[name].input_data_names) for name in subset)

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result = {
        "benchmark": "input selection",
        "runs": RUNS,
        "skims": len(catalog.vocabulary["Data Tag"]),
        "skim_file_entries": entries - RUNS * FILES_PER_RUN,
        "file_entries": entries,
        "calibrations": len(names),
        "inputs": inputs,
        "selected_files": selected_files,
        "whole_catalog_seconds": round(whole, 3),
        "whole_catalog_with_caps_seconds": round(capped, 3),
        "selection_peak_allocated_mb": round(peak_bytes / 2**20, 1),
        "process_peak_rss_mb": round(rss_mb, 1),
        "compared_calibrations": subset,
        "compared_inputs": subset_inputs,
        "candidate_compared_seconds": round(candidate_subset, 3),
        "baseline_compared_seconds": round(baseline_subset, 3),
        "speedup": round(baseline_subset / candidate_subset, 1),
        "same_files": True,
        "target_seconds": TARGET_SECONDS,
        "target_mb": TARGET_MB,
        "within_targets": max(whole, capped) < TARGET_SECONDS and rss_mb < TARGET_MB,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

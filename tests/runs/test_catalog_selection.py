"""Every input of the packaged catalog, selected from a generated bucket, against an independent count.

The count below works on the run registry's raw records with its own reading of each filter value,
and on the site's holdings, without :class:`b2cal.runs.Run` or :class:`b2cal.runs.RunFilter`.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

import pytest

from b2cal.catalog import NOT_PREFIX, load_packaged_release
from b2cal.devservices.runregistry import generate_runs
from b2cal.filesources import FileEntry, StaticFileSource
from b2cal.iov import IoV
from b2cal.runs import RAW_DATA_TAG, EmptyInputError, Run, input_data, select_inputs

CATALOG = load_packaged_release()
CATEGORY = {value: category for category, values in CATALOG.vocabulary.items() for value in values}
BUCKET = IoV(26, 0, 26, -1)
FILES_PER_SKIM = 2


def minutes(record: dict[str, Any]) -> float:
    start = datetime.fromisoformat(record["start_time"].replace("Z", "+00:00"))
    stop = datetime.fromisoformat(record["stop_time"].replace("Z", "+00:00"))
    return (stop - start).total_seconds() / 60


def matches(value: str, record: dict[str, Any], held: set[str]) -> bool:
    """Whether a record matches one filter value, read from the record's fields."""
    quality = record["quality"]
    category = CATEGORY[value]
    if category == "Data Tag":
        return value in held
    if category == "Run Type":
        return record["run_type"] == value
    if category == "Beam Energy":
        return record["beam_energy"] == value
    if category == "Magnet":
        return value == "Either" or (record["solenoid_field"] == "On") == (value == "On")
    checks = {
        "Good": quality["overall"] == "GOOD",
        "Good Or Recoverable": quality["overall"] in ("GOOD", "RECOVERABLE"),
        "Good Shifter": record["shifter_quality"] == "GOOD",
        "Good Or Recoverable Shifter": record["shifter_quality"] in ("GOOD", "RECOVERABLE"),
        ">=30 Minute Run": minutes(record) >= 30,
        "Good For PXD": quality["PXD"] == "GOOD" and quality["overall"] in ("GOOD", "RECOVERABLE"),
        "Bad For Alignment": "BAD" in (quality["PXD"], quality["SVD"], quality["CDC"]),
    }
    return checks[value]


def independent_count(values: list[str], records: list[dict[str, Any]], site: dict) -> tuple[int, int, float]:
    """Return runs kept, files kept and luminosity kept for one input."""
    plain = [value for value in values if not value.startswith(NOT_PREFIX)]
    negated = [value[len(NOT_PREFIX) :] for value in values if value.startswith(NOT_PREFIX)]
    tags = [value for value in plain if CATEGORY[value] == "Data Tag"]
    runs = files = 0
    luminosity = 0.0
    for record in records:
        key = (record["experiment"], record["run"])
        held = {tag for tag in CATEGORY if (tag, key) in site}
        groups: dict[str, list[str]] = {}
        for value in plain:
            groups.setdefault(CATEGORY[value], []).append(value)
        if not all(any(matches(value, record, held) for value in group) for group in groups.values()):
            continue
        if any(CATEGORY[value] != "Data Tag" and matches(value, record, held) for value in negated):
            continue
        count = sum(len(site.get((tag, key), [])) for tag in (tags or [RAW_DATA_TAG]))
        if count:
            runs += 1
            files += count
            luminosity += record["recorded_luminosity"]
    return runs, files, luminosity


@pytest.fixture(scope="module")
def bucket() -> tuple[list[dict[str, Any]], dict]:
    records = [
        record for record in generate_runs(seed=7, runs_per_experiment=150) if record["experiment"] == 26
    ]
    rng = random.Random(7)
    site: dict = {}
    for record in records:
        key = (record["experiment"], record["run"])
        # About one skim in ten has not reached the site yet; the raw data is always there.
        held = [tag for tag in record["skims"] if rng.random() >= 0.1]
        for tag in [RAW_DATA_TAG, *held]:
            site[(tag, key)] = [
                FileEntry(f"/site/{tag}/e{key[0]:04d}/r{key[1]:05d}/{tag}_{index}.root", 1000)
                for index in range(FILES_PER_SKIM)
            ]
    return records, site


@pytest.mark.parametrize("name", CATALOG.names)
def test_catalog_inputs_match_independent_count(name: str, bucket: tuple[list[dict[str, Any]], dict]) -> None:
    records, site = bucket
    settings = CATALOG[name]
    runs = [Run.from_registry(record) for record in records]
    expected = {
        input_name: independent_count(list(settings.input_data_filters.get(input_name, ())), records, site)
        for input_name in settings.input_data_names
    }
    source = StaticFileSource(site, "generated site")
    if any(runs_kept == 0 for runs_kept, _, _ in expected.values()):
        with pytest.raises(EmptyInputError, match=name):
            select_inputs(settings, runs, BUCKET, CATALOG.vocabulary, source)
        return

    selections = select_inputs(settings, runs, BUCKET, CATALOG.vocabulary, source)
    assert list(selections) == list(settings.input_data_names)
    for input_name, (runs_kept, files, luminosity) in expected.items():
        selection = selections[input_name]
        assert selection.runs_kept == runs_kept, input_name
        assert len(selection.files) == files, input_name
        assert selection.luminosity_kept == pytest.approx(luminosity), input_name
        assert selection.runs_considered == len(records)
        assert sum(selection.dropped_by.values()) == len(records) - runs_kept
    data = input_data(selections)
    assert sum(len(entries) for entries in data.values()) == sum(files for _, files, _ in expected.values())


def test_most_catalog_inputs_keep_runs(bucket: tuple[list[dict[str, Any]], dict]) -> None:
    records, site = bucket
    kept = [
        independent_count(list(CATALOG[name].input_data_filters.get(input_name, ())), records, site)[0]
        for name in CATALOG.names
        for input_name in CATALOG[name].input_data_names
    ]
    # The generated bucket must exercise the selection, not only its errors.
    assert sum(1 for count in kept if count) >= len(kept) - 2
    assert max(kept) > 50

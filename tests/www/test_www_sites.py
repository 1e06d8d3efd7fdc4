"""The site pages and the bucket page's skim quota and storage, on inventory rows stored in the database."""

from __future__ import annotations

import html
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event

from b2cal.catalog import load_packaged_release
from b2cal.db import inventory, store
from b2cal.db.engine import get_engine, session_scope
from b2cal.db.inventorymodels import AVAILABLE, FAILED, UNAVAILABLE, DiscoveryErrorRecord, SiteRelease
from b2cal.iov import IoV
from b2cal.request import RequestSpec
from b2cal.runs import Run
from b2cal.skimquota import choose_bucket_quota
from b2cal.storage import CDST, PAYLOAD, SKIM, StorageReport, UsageLine
from b2cal_airflow.plugin import B2CalPlugin

RELEASE = "release-11-00-00"
NEXT_RELEASE = "release-11-01-00"
UID = "prompt-e0026-r00000"
BUCKET = IoV(26, 0, 26, 60)
BROKEN = "release-11-02-00"
CHECK_ERROR = "b2caf-prompt-check failed: CDC badwire declares no expert_username"
GONE_AT = datetime(2026, 3, 4, 10, 30, tzinfo=UTC)
MUMU = "mumu_tight_or_highm_calib"
TB = 10**12
GB = 10**9


def seed_inventory(db_url: str) -> None:
    """Store BNL with one available, one unavailable and one failed release, and DESY with one."""
    with session_scope(db_url) as session:
        session.add_all(
            [
                SiteRelease(site="BNL", release=RELEASE, state=AVAILABLE, calibrations=28),
                SiteRelease(
                    site="BNL",
                    release=NEXT_RELEASE,
                    state=UNAVAILABLE,
                    calibrations=28,
                    unavailable_since=GONE_AT,
                ),
                SiteRelease(site="BNL", release=BROKEN, state=FAILED, error=CHECK_ERROR),
                SiteRelease(site="DESY", release=NEXT_RELEASE, state=AVAILABLE, calibrations=28),
                DiscoveryErrorRecord(
                    site="BNL",
                    release=BROKEN,
                    stage="check",
                    message=CHECK_ERROR,
                    output="Traceback: settings of CDC badwire",
                ),
            ]
        )


def seed_request(db_url: str) -> None:
    """Store a prompt request at BNL for :data:`BUCKET`."""
    catalog = load_packaged_release()
    spec = RequestSpec(
        uid=UID,
        kind="prompt",
        site="BNL",
        release=catalog.release,
        bucket=BUCKET,
        calibrations=("CDC Tracking",),
        staging_tag="staging_prompt_e0026",
        running_tag="b2cal_prompt_running",
        requested_by="manager",
    )
    with session_scope(db_url) as session:
        store.save_request(session, spec, catalog)


def cell(page: str, table_id: str, row_attribute: str, css_class: str) -> str:
    """Return the text of the cell with ``css_class`` in the row with ``row_attribute`` of a table."""
    table = page.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    row = table.split(row_attribute, 1)[1].split("</tr>", 1)[0]
    text = row.split(f'class="{css_class}">', 1)[1].split("<", 1)[0]
    return html.unescape(text).strip()


@contextmanager
def counted_statements(db_url: str) -> Iterator[list[str]]:
    """Collect the SQL statements run on the plugin database inside the block."""
    statements: list[str] = []
    engine = get_engine(db_url)

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_sites_page_counts_releases_per_state(pages, db_url):
    seed_inventory(db_url)

    response = pages.client.get("/sites")

    assert response.status_code == 200
    row = response.text.split('data-site="BNL"', 1)[1].split("</tr>", 1)[0]
    assert 'href="/b2cal/sites/BNL"' in row
    assert 'class="count-available">1<' in row
    assert 'class="count-unavailable">1<' in row
    assert 'class="count-failed">1<' in row
    desy = response.text.split('data-site="DESY"', 1)[1].split("</tr>", 1)[0]
    assert 'class="count-available">1<' in desy
    assert 'class="count-failed">0<' in desy


def test_sites_page_without_inventory_names_the_dag(pages):
    response = pages.client.get("/sites")

    assert response.status_code == 200
    assert "b2cal_release_discovery" in response.text


def test_site_page_shows_availability_and_since_when(pages, db_url):
    seed_inventory(db_url)

    response = pages.client.get("/sites/BNL")

    assert response.status_code == 200
    table = response.text.split('id="site-releases"', 1)[1].split("</table>", 1)[0]
    available = table.split(f'data-release="{RELEASE}"', 1)[1].split("</tr>", 1)[0]
    assert '<td class="state">available</td>' in available
    unavailable_row = table.split(f'data-release="{NEXT_RELEASE}"', 1)[1].split("</tr>", 1)[0]
    assert "unavailable since 2026-03-04 10:30" in unavailable_row


def test_site_page_shows_failed_check_error(pages, db_url):
    seed_inventory(db_url)

    response = pages.client.get("/sites/BNL")

    failed = response.text.split('id="failed-releases"', 1)[1].split("</table>", 1)[0]
    assert f'data-release="{BROKEN}"' in failed
    assert html.escape(CHECK_ERROR) in failed
    assert f'data-release="{RELEASE}"' not in failed, "an available release is not a failed check"
    errors = response.text.split('id="discovery-errors"', 1)[1].split("</table>", 1)[0]
    assert '<td class="state">check</td>' in errors
    assert "Traceback: settings of CDC badwire" in errors


def test_site_page_links_the_diff_of_consecutive_releases(pages, db_url):
    seed_inventory(db_url)

    response = pages.client.get("/sites/BNL")

    table = response.text.split('id="site-releases"', 1)[1].split("</table>", 1)[0]
    links = [part.split('"', 1)[0] for part in table.split('class="diff-link" href="')[1:]]
    assert links == [f"/b2cal/catalog/diff?old={RELEASE}&amp;new={NEXT_RELEASE}"]
    broken = table.split(f'data-release="{BROKEN}"', 1)[1].split("</tr>", 1)[0]
    assert "diff-link" not in broken, "a release without an imported catalog has nothing to compare"
    diff = pages.client.get(html.unescape(links[0]).removeprefix("/b2cal"))
    assert diff.status_code == 200
    assert "<li>SVD occupancy</li>" in diff.text


def test_site_page_redirects_to_the_known_case(pages, db_url):
    seed_inventory(db_url)

    redirect = pages.client.get("/sites/bnl", follow_redirects=False)
    page = pages.client.get("/sites/Bnl")

    assert redirect.status_code == 307
    assert redirect.headers["location"] == "/b2cal/sites/BNL"
    assert page.status_code == 200
    assert str(page.url).endswith("/b2cal/sites/BNL")
    assert f'data-release="{RELEASE}"' in page.text


def test_unknown_site_page_is_404(pages, db_url):
    seed_inventory(db_url)

    response = pages.client.get("/sites/NOWHERE")

    assert response.status_code == 404
    assert "b2cal_release_discovery" in response.text


def test_navigation_and_catalog_link_the_site_pages(pages, db_url):
    seed_inventory(db_url)

    response = pages.client.get(f"/catalog?release={NEXT_RELEASE}")

    nav = response.text.split("<nav>", 1)[1].split("</nav>", 1)[0]
    assert 'href="/b2cal/sites"' in nav
    assert 'id="sites-link"' in response.text
    where = response.text.split('id="release-sites"', 1)[1].split("</p>", 1)[0]
    assert 'href="/b2cal/sites/BNL">BNL</a> <span class="state">unavailable</span>' in where
    assert 'href="/b2cal/sites/DESY">DESY</a> <span class="state">available</span>' in where


def test_airflow_navigation_links_the_sites_page():
    views = {view["name"]: view for view in B2CalPlugin.external_views}

    assert views["Calibration sites"]["href"] == "/b2cal/sites"
    assert views["Calibration sites"]["category"] == views["Calibration catalog"]["category"]


def test_site_page_queries_do_not_grow_with_releases(pages, db_url):
    seed_inventory(db_url)
    pages.client.get("/sites/BNL")
    with counted_statements(db_url) as few:
        assert pages.client.get("/sites/BNL").status_code == 200
    with session_scope(db_url) as session:
        for minor in range(20):
            session.add(SiteRelease(site="BNL", release=f"release-12-{minor:02d}-00", state=AVAILABLE))
            session.add(
                DiscoveryErrorRecord(
                    site="BNL", release=f"release-12-{minor:02d}-00", stage="show", message="x"
                )
            )

    with counted_statements(db_url) as many:
        assert pages.client.get("/sites/BNL").status_code == 200

    assert len(many) == len(few)


def store_quota_and_storage(
    db_url: str, records: list[dict[str, Any]]
) -> dict[str, tuple[int, float, float]]:
    """Choose and store the quota of two skims, and store storage lines for BNL and DESY.

    Return per skim the chosen runs, their luminosity summed from the registry records and the target.
    """
    runs = [Run.from_registry(record) for record in records]
    targets = {"hadron_calib": 500.0, MUMU: 2000.0}
    quota = choose_bucket_quota(
        load_packaged_release(), runs, BUCKET, data_tags=list(targets), targets=targets
    )
    expected = {}
    for tag, skim in quota.quotas.items():
        keys = skim.chosen_keys
        luminosity = sum(
            record["recorded_luminosity"]
            for record in records
            if (record["experiment"], record["run"]) in keys
        )
        expected[tag] = (len(keys), luminosity, targets[tag])
    bnl = StorageReport(
        BUCKET,
        "BNL",
        [
            UsageLine(SKIM, "hadron_calib", files=1200, bytes=4_200 * GB),
            UsageLine(SKIM, MUMU, files=400, bytes=1_300 * GB, unsized_files=3),
            UsageLine(CDST, "hadron_calib", files=900, bytes=12_700 * GB),
            UsageLine(PAYLOAD, "", files=120, bytes=351 * GB),
        ],
    )
    desy = StorageReport(BUCKET, "DESY", [UsageLine(CDST, "hadron_calib", files=900, bytes=12_700 * GB)])
    with session_scope(db_url) as session:
        inventory.save_bucket_quota(session, quota)
        inventory.save_storage_report(session, bnl)
        inventory.save_storage_report(session, desy)
    return expected


def test_bucket_page_shows_skim_quota_from_stored_rows(pages, db_url, cached_runs):
    seed_request(db_url)
    expected = store_quota_and_storage(db_url, cached_runs)

    response = pages.client.get(f"/requests/{UID}")

    assert response.status_code == 200
    assert set(expected) == {"hadron_calib", MUMU}
    for tag, (count, luminosity, target) in expected.items():
        assert count > 0, f"the test bucket has runs of {tag}"
        row = f'data-skim="{tag}"'
        assert cell(response.text, "skim-quota", row, "target-pb") == f"{target:.1f} pb⁻¹"
        assert cell(response.text, "skim-quota", row, "chosen-pb") == f"{luminosity:.1f} pb⁻¹"
        assert cell(response.text, "skim-quota", row, "chosen-runs").startswith(f"{count} of ")
    mumu = response.text.split(f'data-skim="{MUMU}"', 1)[1].split("</tr>", 1)[0]
    assert f"{MUMU}: {expected[MUMU][0]} of" in mumu, "the stored explanation is shown"


def test_bucket_page_shows_storage_per_site(pages, db_url, cached_runs):
    seed_request(db_url)
    store_quota_and_storage(db_url, cached_runs)

    response = pages.client.get(f"/requests/{UID}")

    row = 'data-site="BNL"'
    assert cell(response.text, "storage", row, "bytes-skim") == f"{(4_200 + 1_300) * GB / TB:.1f} TB"
    assert cell(response.text, "storage", row, "bytes-cdst") == f"{12_700 * GB / TB:.1f} TB"
    assert cell(response.text, "storage", row, "bytes-payload") == f"{351 * GB / GB:.1f} GB"
    total = (4_200 + 1_300 + 12_700 + 351) * GB
    assert cell(response.text, "storage", row, "bytes-total") == f"{total / TB:.1f} TB"
    bnl = response.text.split(row, 1)[1].split("</tr>", 1)[0]
    assert "1600 files, 3 without a size" in bnl
    desy = 'data-site="DESY"'
    assert cell(response.text, "storage", desy, "bytes-cdst") == "12.7 TB"
    assert cell(response.text, "storage", desy, "bytes-skim") == "0 B"


def test_bucket_page_without_inventory_names_the_dag(pages, db_url):
    seed_request(db_url)

    response = pages.client.get(f"/requests/{UID}")

    missing_quota = response.text.split('id="skim-quota-missing"', 1)[1].split("</p>", 1)[0]
    assert "b2cal_bucket_inventory" in missing_quota
    missing_storage = response.text.split('id="storage-missing"', 1)[1].split("</p>", 1)[0]
    assert "b2cal_bucket_inventory" in missing_storage
    assert 'id="skim-quota"' not in response.text


def test_bucket_page_queries_do_not_grow_with_skims_and_sites(pages, db_url, cached_runs):
    seed_request(db_url)
    pages.client.get(f"/requests/{UID}")  # fills the catalog cache, which the second visit skips
    with counted_statements(db_url) as empty:
        assert pages.client.get(f"/requests/{UID}").status_code == 200
    store_quota_and_storage(db_url, cached_runs)

    with counted_statements(db_url) as filled:
        assert pages.client.get(f"/requests/{UID}").status_code == 200

    assert len(filled) == len(empty)
    assert not any("b2cal_skim_quota.runs" in statement for statement in filled)

"""Exercise the conditions database client against the development service."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from b2cal.conddb import (
    ConditionsDB,
    ConditionsDBError,
    LocalDatabaseError,
    RunningUpdateError,
    TokenExpiredError,
    read_database_folder,
    token_expiry,
)
from b2cal.devservices.config import DevServicesConfig
from b2cal.devservices.server import DevServices, start_services
from b2cal.iov import IoV

CONFIG = DevServicesConfig(jira_experts=(), runs_per_experiment=5)


@pytest.fixture(scope="module")
def services() -> Iterator[DevServices]:
    handle = start_services(jira_port=0, conddb_port=0, runregistry_port=0, config=CONFIG)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def db(services: DevServices) -> ConditionsDB:
    services.conddb_state.reset()
    return ConditionsDB(services.conddb_url, token=CONFIG.conddb_token, timeout=10, retries=2, backoff=0.0)


def write_folder(folder: Path, payloads: dict[tuple[str, int], bytes], lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for (name, revision), data in payloads.items():
        (folder / f"dbstore_{name}_rev_{revision}.root").write_bytes(data)
    (folder / "database.txt").write_text("".join(f"{line}\n" for line in lines))
    return folder


def bucket_folder(folder: Path, first: str = "26,100", salt: bytes = b"") -> Path:
    """A calibration output with two payloads valid from ``first`` on."""
    return write_folder(
        folder,
        {("BeamSpot", 1): b"beamspot" + salt, ("CDCT0", 4): b"cdc-t0" + salt},
        [f"dbstore/BeamSpot 1 {first},-1,-1", f"dbstore/CDCT0 4 {first},-1,-1"],
    )


def validate(db: ConditionsDB, tag: str) -> None:
    db.set_global_tag_state(tag, "TESTING")
    db.set_global_tag_state(tag, "VALIDATED")


def running_tag(db: ConditionsDB, tmp_path: Path, name: str = "prompt_running") -> None:
    """A RUNNING tag whose BeamSpot and CDCT0 are open-ended from 26,0."""
    db.create_global_tag(name, "running tag")
    db.upload_database_folder(bucket_folder(tmp_path / "previous", "26,0", b"-old"), name)
    db.set_global_tag_state(name, "RUNNING")


# Local database folders


def test_read_database_folder(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path,
        {("BeamSpot", 1): b"beam", ("CDCT0", 3): b"cdc"},
        [
            "# produced by the CAF",
            "dbstore/BeamSpot 1 26,100,26,199  # first part",
            "dbstore/BeamSpot 1 26,200,-1,-1",
            "",
            "dbstore/CDCT0 3 26,100,-1,-1",
            "dbstore/CDCT0 3 26,100,-1,-1",
        ],
    )
    payloads = read_database_folder(folder)
    assert [(item.name, item.revision, item.iov.as_text(), item.line) for item in payloads] == [
        ("BeamSpot", 1, "26,100,26,199", 2),
        ("BeamSpot", 1, "26,200,-1,-1", 3),
        ("CDCT0", 3, "26,100,-1,-1", 5),
    ]
    assert payloads[0].checksum == hashlib.md5(b"beam").hexdigest()
    assert payloads[0].path == folder / "dbstore_BeamSpot_rev_1.root"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("dbstore/BeamSpot 1", "must be 'dbstore/<Name>"),
        ("payloads/BeamSpot 1 26,0,-1,-1", "dbstore/<Name>"),
        ("dbstore/BeamSpot one 26,0,-1,-1", "revision 'one'"),
        ("dbstore/BeamSpot 1 26,0,-1", "four"),
        ("dbstore/BeamSpot 1 26,10,26,5", "ends before"),
        ("dbstore/BeamSpot 2 26,0,-1,-1", "dbstore_BeamSpot_rev_2.root"),
    ],
)
def test_read_database_folder_errors_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    write_folder(tmp_path, {("BeamSpot", 1): b"beam"}, ["dbstore/BeamSpot 1 26,0,-1,-1", line])
    with pytest.raises(LocalDatabaseError, match=message) as raised:
        read_database_folder(tmp_path)
    assert "database.txt:2" in str(raised.value)


def test_read_database_folder_without_index(tmp_path: Path) -> None:
    with pytest.raises(LocalDatabaseError, match="database.txt"):
        read_database_folder(tmp_path)


# Tags and tokens


def test_writes_need_a_token(services: DevServices, db: ConditionsDB) -> None:
    anonymous = ConditionsDB(services.conddb_url)
    assert anonymous.list_global_tags() == []
    with pytest.raises(ConditionsDBError, match="token"):
        anonymous.create_global_tag("t", "d")

    wrong = ConditionsDB(services.conddb_url, token="wrong")
    with pytest.raises(ConditionsDBError) as raised:
        wrong.create_global_tag("t", "d")
    assert raised.value.status == 401
    assert raised.value.reason == "Unauthorized"
    assert "invalid" in (raised.value.server_message or "")
    assert db.get_global_tag("t") is None


def test_global_tag_state_changes(db: ConditionsDB) -> None:
    db.create_global_tag("tag", "description")
    assert db.tag_state(db.set_global_tag_state("tag", "TESTING")) == "TESTING"
    assert db.tag_state(db.set_global_tag_state("tag", "TESTING")) == "TESTING"
    with pytest.raises(ConditionsDBError) as raised:
        db.set_global_tag_state("tag", "PUBLISHED")
    assert raised.value.status == 409
    assert "TESTING to PUBLISHED" in str(raised.value)
    with pytest.raises(ConditionsDBError, match="does not exist"):
        db.set_global_tag_state("missing", "OPEN")
    assert [tag["name"] for tag in db.list_global_tags()] == ["tag"]


def test_prepare_staging_tag_creates_and_empties(db: ConditionsDB, tmp_path: Path) -> None:
    created = db.prepare_staging_tag("staging", "bucket 1")
    assert db.tag_state(created) == "OPEN"

    db.upload_database_folder(bucket_folder(tmp_path / "out"), "staging")
    validate(db, "staging")
    emptied = db.prepare_staging_tag("staging", "bucket 1 again")
    assert db.tag_state(emptied) == "OPEN"
    assert emptied["globalTagId"] == created["globalTagId"]
    assert db.global_tag_payloads("staging") == []


@pytest.mark.parametrize("path", [["RUNNING"], ["TESTING", "VALIDATED", "PUBLISHED"]])
def test_prepare_staging_tag_rejects_frozen_tags(db: ConditionsDB, path: list[str]) -> None:
    db.create_global_tag("staging", "bucket")
    for state in path:
        db.set_global_tag_state("staging", state)
    with pytest.raises(ConditionsDBError, match=f"{path[-1]} and cannot be emptied"):
        db.prepare_staging_tag("staging", "bucket")


def test_clone_global_tag(db: ConditionsDB, tmp_path: Path) -> None:
    db.create_global_tag("source", "d")
    db.upload_database_folder(bucket_folder(tmp_path / "out"), "source")
    db.clone_global_tag("source", "copy")
    assert [item.iov for item in db.global_tag_payloads("copy")] == [
        item.iov for item in db.global_tag_payloads("source")
    ]


# Upload


def test_upload_then_rerun_creates_nothing(db: ConditionsDB, tmp_path: Path) -> None:
    db.create_global_tag("staging", "d")
    folder = bucket_folder(tmp_path / "out")
    first = db.upload_database_folder(folder, "staging")
    assert (first.uploaded_payloads, first.skipped_payloads) == (2, 0)
    assert (first.created_iovs, first.skipped_iovs) == (2, 0)

    again = db.upload_database_folder(folder, "staging")
    assert (again.uploaded_payloads, again.skipped_payloads) == (0, 2)
    assert (again.created_iovs, again.skipped_iovs) == (0, 2)
    stored = db.global_tag_payloads("staging")
    assert [(item.name, item.iov.as_text()) for item in stored] == [
        ("BeamSpot", "26,100,-1,-1"),
        ("CDCT0", "26,100,-1,-1"),
    ]
    assert [item.iov_id for item in again.iovs] == [item.iov_id for item in first.iovs]


def test_upload_resumes_after_a_failure(services: DevServices, db: ConditionsDB, tmp_path: Path) -> None:
    db.create_global_tag("staging", "d")
    folder = bucket_folder(tmp_path / "out")
    services.conddb_state.faults.fail_next(3, 503, "/v2/globalTagPayload/")
    with pytest.raises(ConditionsDBError) as raised:
        db.upload_database_folder(folder, "staging")
    assert raised.value.status == 503
    assert raised.value.attempts == 3
    assert db.global_tag_payloads("staging") == []

    resumed = db.upload_database_folder(folder, "staging")
    assert (resumed.uploaded_payloads, resumed.skipped_payloads) == (0, 2)
    assert resumed.created_iovs == 2
    assert len(db.global_tag_payloads("staging")) == 2
    assert len(services.conddb_state.snapshot("")["payloads"]) == 2


def test_upload_reuses_payloads_stored_for_other_tags(db: ConditionsDB, tmp_path: Path) -> None:
    db.create_global_tag("one", "d")
    db.create_global_tag("two", "d")
    folder = bucket_folder(tmp_path / "out")
    db.upload_database_folder(folder, "one")
    second = db.upload_database_folder(folder, "two")
    assert second.uploaded_payloads == 0
    assert second.created_iovs == 2


def test_upload_rejects_validated_tag(db: ConditionsDB, tmp_path: Path) -> None:
    db.create_global_tag("staging", "d")
    validate(db, "staging")
    with pytest.raises(ConditionsDBError, match="VALIDATED: uploads need an OPEN tag"):
        db.upload_database_folder(bucket_folder(tmp_path / "out"), "staging")


def test_running_tag_rejects_old_runs(db: ConditionsDB, tmp_path: Path) -> None:
    running_tag(db, tmp_path)
    tag_id = int(db.get_global_tag("prompt_running")["globalTagId"])  # type: ignore[index]
    payload_id = db.global_tag_payloads("prompt_running")[0].payload_id
    with pytest.raises(ConditionsDBError) as raised:
        db.create_iov(tag_id, payload_id, IoV(25, 0, 25, -1))
    assert raised.value.status == 409
    assert "new runs" in str(raised.value)


# Running update


def test_running_update_dry_run_changes_nothing(db: ConditionsDB, tmp_path: Path) -> None:
    running_tag(db, tmp_path)
    db.create_global_tag("staging", "d")
    db.upload_database_folder(bucket_folder(tmp_path / "out"), "staging")
    validate(db, "staging")
    before = db.global_tag_payloads("prompt_running")

    plan = db.running_update("staging", "prompt_running", (26, 100))
    assert plan.dry_run
    assert not plan.applied
    assert plan.ok
    assert [(item.name, item.new.as_text()) for item in plan.to_close] == [
        ("BeamSpot", "26,0,26,99"),
        ("CDCT0", "26,0,26,99"),
    ]
    assert [item.iov.as_text() for item in plan.to_add] == ["26,100,-1,-1", "26,100,-1,-1"]
    assert db.global_tag_payloads("prompt_running") == before


def test_running_update_applies_once(db: ConditionsDB, tmp_path: Path) -> None:
    running_tag(db, tmp_path)
    db.create_global_tag("staging", "d")
    db.upload_database_folder(bucket_folder(tmp_path / "out"), "staging")
    validate(db, "staging")

    done = db.running_update("staging", "prompt_running", (26, 100), dry_run=False)
    assert done.applied
    assert (len(done.to_close), len(done.to_add)) == (2, 2)
    after = db.global_tag_payloads("prompt_running")
    assert [(item.name, item.iov.as_text()) for item in after] == [
        ("BeamSpot", "26,0,26,99"),
        ("BeamSpot", "26,100,-1,-1"),
        ("CDCT0", "26,0,26,99"),
        ("CDCT0", "26,100,-1,-1"),
    ]

    again = db.running_update("staging", "prompt_running", (26, 100), dry_run=False)
    assert again.is_empty
    assert again.already_added == 2
    assert db.global_tag_payloads("prompt_running") == after


def test_running_update_completes_after_partial_failure(
    services: DevServices, db: ConditionsDB, tmp_path: Path
) -> None:
    running_tag(db, tmp_path)
    db.create_global_tag("staging", "d")
    db.upload_database_folder(bucket_folder(tmp_path / "out"), "staging")
    validate(db, "staging")

    tag_id = db.get_global_tag("prompt_running")["globalTagId"]  # type: ignore[index]
    cdc = next(item for item in db.global_tag_payloads("staging") if item.name == "CDCT0")
    services.conddb_state.faults.fail_next(3, 502, f"/v2/globalTagPayload/{tag_id},{cdc.payload_id}/")
    with pytest.raises(ConditionsDBError) as raised:
        db.running_update("staging", "prompt_running", (26, 100), dry_run=False)
    assert raised.value.status == 502
    partial = [(item.name, item.iov.as_text()) for item in db.global_tag_payloads("prompt_running")]
    assert partial == [("BeamSpot", "26,0,26,99"), ("BeamSpot", "26,100,-1,-1"), ("CDCT0", "26,0,26,99")]

    resumed = db.running_update("staging", "prompt_running", (26, 100), dry_run=False)
    assert resumed.applied
    assert resumed.to_close == []
    assert [item.name for item in resumed.to_add] == ["CDCT0"]
    assert resumed.already_added == 1
    names = [(item.name, item.iov.as_text()) for item in db.global_tag_payloads("prompt_running")]
    assert sorted(names) == sorted([*partial, ("CDCT0", "26,100,-1,-1")])
    assert len(names) == len(set(names)) == 4


def test_running_update_requires_states(db: ConditionsDB, tmp_path: Path) -> None:
    running_tag(db, tmp_path)
    db.create_global_tag("staging", "d")
    with pytest.raises(
        ConditionsDBError, match="'staging' is OPEN, but the running update needs it VALIDATED"
    ):
        db.running_update("staging", "prompt_running", (26, 100))
    with pytest.raises(ConditionsDBError, match="needs it RUNNING"):
        db.running_update("prompt_running", "staging", (26, 100))


def test_running_update_rejects_bad_staging(db: ConditionsDB, tmp_path: Path) -> None:
    running_tag(db, tmp_path)
    db.create_global_tag("staging", "d")
    db.upload_database_folder(bucket_folder(tmp_path / "out", "26,90"), "staging")
    validate(db, "staging")

    dry = db.running_update("staging", "prompt_running", (26, 100))
    assert not dry.ok
    assert {problem.kind for problem in dry.problems} == {"wrong_start"}
    before = db.global_tag_payloads("prompt_running")
    with pytest.raises(RunningUpdateError) as raised:
        db.running_update("staging", "prompt_running", (26, 100), dry_run=False)
    assert len(raised.value.problems) == 2
    assert db.global_tag_payloads("prompt_running") == before


# Safe retries


def snapshot_counts(services: DevServices) -> tuple[int, int, int]:
    state = services.conddb_state.snapshot("")
    return len(state["globalTags"]), len(state["payloads"]), len(state["payloadIovs"])


def test_reads_are_retried_until_they_succeed(services: DevServices, db: ConditionsDB) -> None:
    db.create_global_tag("tag", "d")
    services.conddb_state.faults.fail_next(2, 503, "/v2/globalTag/tag")
    assert db.get_global_tag("tag")["name"] == "tag"  # type: ignore[index]
    assert services.conddb_state.faults.pending == 0


def test_retries_wait_longer_each_time(services: DevServices) -> None:
    waits: list[float] = []
    client = ConditionsDB(services.conddb_url, retries=3, backoff=0.5, sleep=waits.append)
    services.conddb_state.reset()
    services.conddb_state.faults.fail_next(4, 504, "/v2/globalTags")
    with pytest.raises(ConditionsDBError) as raised:
        client.list_global_tags()
    assert raised.value.attempts == 4
    assert waits == [0.5, 1.0, 2.0]


def test_errors_that_are_not_transient_are_not_retried(services: DevServices, db: ConditionsDB) -> None:
    db.create_global_tag("tag", "d")
    with pytest.raises(ConditionsDBError) as raised:
        db.create_global_tag("tag", "d")
    assert (raised.value.status, raised.value.attempts, raised.value.transient) == (409, 1, False)


@pytest.mark.parametrize(
    ("method", "path_prefix"),
    [
        ("POST", "/v2/globalTag/DEV"),
        ("POST", "/v2/package/dbstore/module/"),
        ("POST", "/v2/globalTagPayload/"),
    ],
)
def test_lost_responses_of_creates_are_not_sent_again(
    services: DevServices, db: ConditionsDB, tmp_path: Path, method: str, path_prefix: str
) -> None:
    # The server carries the request out, then the answer is lost: a blind retry would duplicate it.
    services.conddb_state.schedule.add(status=503, method=method, path_prefix=path_prefix, apply=True)
    db.create_global_tag("staging", "d")
    result = db.upload_database_folder(bucket_folder(tmp_path / "out"), "staging")
    assert services.conddb_state.schedule.pending == 0
    assert snapshot_counts(services) == (1, 2, 2)
    assert (result.created_iovs, len(result.iovs)) == (2, 2)
    assert sorted(item.iov_id for item in result.iovs) == sorted(
        item.iov_id for item in db.global_tag_payloads("staging")
    )


def test_lost_response_of_a_state_change(services: DevServices, db: ConditionsDB) -> None:
    db.create_global_tag("tag", "d")
    services.conddb_state.schedule.add(status=502, method="PUT", path_prefix="/v2/globalTag/tag/", apply=True)
    assert db.tag_state(db.set_global_tag_state("tag", "TESTING")) == "TESTING"
    assert services.conddb_state.tag("tag").state == "TESTING"


def test_lost_response_of_a_delete(services: DevServices, db: ConditionsDB, tmp_path: Path) -> None:
    db.create_global_tag("staging", "d")
    db.upload_database_folder(bucket_folder(tmp_path / "out"), "staging")
    services.conddb_state.schedule.add(status=503, method="DELETE", path_prefix="/v2/payloadIov/", apply=True)
    db.prepare_staging_tag("staging", "again")
    assert db.global_tag_payloads("staging") == []


def test_upload_interrupted_and_resumed_creates_no_duplicate(
    services: DevServices, db: ConditionsDB, tmp_path: Path
) -> None:
    names = [f"Payload{index}" for index in range(6)]
    folder = write_folder(
        tmp_path / "out",
        {(name, 1): name.encode() for name in names},
        [f"dbstore/{name} 1 26,0,-1,-1" for name in names],
    )
    db.create_global_tag("staging", "d")
    services.conddb_state.schedule.add(
        status=500, method="POST", path_prefix="/v2/globalTagPayload/", after=3
    )
    with pytest.raises(ConditionsDBError) as raised:
        db.upload_database_folder(folder, "staging")
    assert raised.value.status == 500
    assert len(db.global_tag_payloads("staging")) == 3

    resumed = db.upload_database_folder(folder, "staging")
    assert (resumed.uploaded_payloads, resumed.created_iovs, resumed.skipped_iovs) == (0, 3, 3)
    stored = [(item.name, item.iov.as_text()) for item in db.global_tag_payloads("staging")]
    assert sorted(stored) == sorted((name, "26,0,-1,-1") for name in names)
    assert snapshot_counts(services) == (1, 6, 6)


def test_complete_upload_to_a_validated_tag_needs_no_write(
    services: DevServices, db: ConditionsDB, tmp_path: Path
) -> None:
    db.create_global_tag("staging", "d")
    folder = bucket_folder(tmp_path / "out")
    db.upload_database_folder(folder, "staging")
    validate(db, "staging")
    reader = ConditionsDB(services.conddb_url)
    again = reader.upload_database_folder(folder, "staging")
    assert (again.created_iovs, again.skipped_iovs) == (0, 2)


# Tokens


def test_jwt_expiry_is_read_from_the_token(services: DevServices) -> None:
    token = services.conddb_state.issue_token(120)
    expires = token_expiry(token)
    assert expires is not None
    assert 100 < expires.timestamp() - time.time() <= 120
    assert token_expiry(CONFIG.conddb_token) is None
    assert token_expiry("a.!!!.c") is None


def test_issued_token_allows_writes(services: DevServices, db: ConditionsDB) -> None:
    client = ConditionsDB(services.conddb_url, token=services.conddb_state.issue_token(60), retries=0)
    client.create_global_tag("tag", "d")
    assert db.get_global_tag("tag") is not None


def test_expired_token_is_refused_before_sending(services: DevServices, db: ConditionsDB) -> None:
    client = ConditionsDB(
        services.conddb_url,
        token=services.conddb_state.issue_token(-600),
        token_source="the password of the Airflow connection 'b2cal_conddb'",
    )
    with pytest.raises(TokenExpiredError) as raised:
        client.create_global_tag("tag", "d")
    message = str(raised.value)
    assert "expired at" in message
    assert "'b2cal_conddb'" in message
    assert "was not sent" in message
    assert raised.value.expired_at is not None
    assert db.get_global_tag("tag") is None


def test_token_the_server_finds_expired(services: DevServices, db: ConditionsDB) -> None:
    # Expired two seconds ago: within the client's allowance for clock skew, so the server decides.
    client = ConditionsDB(services.conddb_url, token=services.conddb_state.issue_token(-2), retries=0)
    with pytest.raises(TokenExpiredError) as raised:
        client.create_global_tag("tag", "d")
    assert raised.value.status == 401
    assert "expired" in (raised.value.server_message or "")
    assert "new token" in str(raised.value)


def test_forged_token_is_refused_as_invalid(services: DevServices) -> None:
    token = services.conddb_state.issue_token(60)
    header, claims, _ = token.split(".")
    client = ConditionsDB(services.conddb_url, token=f"{header}.{claims}.AAAA", retries=0)
    with pytest.raises(ConditionsDBError) as raised:
        client.create_global_tag("tag", "d")
    assert not isinstance(raised.value, TokenExpiredError)
    assert raised.value.status == 401
    assert "refused the token" in str(raised.value)


# Running update: failures in the middle and approval


def three_payload_bucket(db: ConditionsDB, tmp_path: Path) -> list[str]:
    names = ["BeamSpot", "CDCT0", "ECLGain"]
    db.create_global_tag("prompt_running", "running tag")
    old = write_folder(
        tmp_path / "old",
        {(name, 1): f"{name}-old".encode() for name in names},
        [f"dbstore/{n} 1 26,0,-1,-1" for n in names],
    )
    db.upload_database_folder(old, "prompt_running")
    db.set_global_tag_state("prompt_running", "RUNNING")
    db.create_global_tag("staging", "d")
    new = write_folder(
        tmp_path / "new",
        {(name, 1): f"{name}-new".encode() for name in names},
        [f"dbstore/{n} 1 26,100,-1,-1" for n in names],
    )
    db.upload_database_folder(new, "staging")
    validate(db, "staging")
    return names


def coverage(db: ConditionsDB, names: list[str]) -> dict[str, list[str]]:
    stored = db.global_tag_payloads("prompt_running")
    return {name: [item.iov.as_text() for item in stored if item.name == name] for name in names}


@pytest.mark.parametrize("after", [0, 1, 2, 3, 4, 5])
def test_running_update_failing_in_the_middle_stays_consistent(
    services: DevServices, db: ConditionsDB, tmp_path: Path, after: int
) -> None:
    names = three_payload_bucket(db, tmp_path)
    tag_id = db.get_global_tag("prompt_running")["globalTagId"]  # type: ignore[index]
    writes = [
        (method, prefix)
        for method, prefix in (("PUT", "/v2/payloadIov/"), ("POST", f"/v2/globalTagPayload/{tag_id},"))
    ]
    # The update sends, per payload, one close (PUT) and one add (POST): fail the write number `after`.
    method, prefix = writes[after % 2]
    services.conddb_state.schedule.add(status=500, method=method, path_prefix=prefix, after=after // 2)
    with pytest.raises(ConditionsDBError):
        db.running_update("staging", "prompt_running", (26, 100), dry_run=False)

    state = coverage(db, names)
    old, closed, new = "26,0,-1,-1", "26,0,26,99", "26,100,-1,-1"
    finished = [name for name in names if state[name] == [closed, new]]
    untouched = [name for name in names if state[name] == [old]]
    halfway = [name for name in names if state[name] == [closed]]
    assert len(finished) + len(untouched) + len(halfway) == len(names), state
    assert len(halfway) <= 1, state
    assert finished == names[: len(finished)], state

    done = db.running_update("staging", "prompt_running", (26, 100), dry_run=False)
    assert done.applied
    assert coverage(db, names) == {name: [closed, new] for name in names}
    again = db.running_update("staging", "prompt_running", (26, 100), dry_run=False)
    assert again.is_empty


def test_running_update_refuses_unapproved_operations(db: ConditionsDB, tmp_path: Path) -> None:
    three_payload_bucket(db, tmp_path)
    dry = db.running_update("staging", "prompt_running", (26, 100))
    keys = dry.operation_keys()
    assert len(keys) == 6
    assert any(
        key.startswith("close BeamSpot rev 1") and key.endswith("26,0,-1,-1 -> 26,0,26,99") for key in keys
    )
    before = db.global_tag_payloads("prompt_running")
    with pytest.raises(RunningUpdateError, match="not approved: add ECLGain"):
        db.running_update("staging", "prompt_running", (26, 100), dry_run=False, approved=keys[:-1])
    assert db.global_tag_payloads("prompt_running") == before
    done = db.running_update("staging", "prompt_running", (26, 100), dry_run=False, approved=keys)
    assert done.applied

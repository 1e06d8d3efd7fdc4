"""Check the HTTP contract and the rules of the development conditions database."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
import requests
from urllib3.fields import RequestField
from urllib3.filepost import encode_multipart_formdata

from b2cal.devservices.config import DevServicesConfig
from b2cal.devservices.server import DevServices


class Api:
    """Thin raw-HTTP helper, so the tests see the service's own status codes and bodies."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.auth = {"X-Authorization": f"Bearer {token}"}

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(f"{self.base_url}/v2/{path}", timeout=10, **kwargs)

    def write(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        return self.session.request(
            method, f"{self.base_url}/v2/{path}", headers=headers, timeout=10, **kwargs
        )

    def create_tag(self, name: str, tag_type: str = "DEV") -> dict[str, Any]:
        response = self.write("POST", f"globalTag/{tag_type}", json={"name": name, "description": "test"})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def set_state(self, name: str, state: str) -> requests.Response:
        return self.write("PUT", f"globalTag/{name}/updateGlobalTagStatus/{state}")

    def upload(self, name: str, data: bytes) -> dict[str, Any]:
        response = self.write(
            "POST",
            f"package/dbstore/module/{name}/payload",
            files={"file": (f"{name}.root", data)},
            data={"checksum": hashlib.md5(data).hexdigest()},
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    def add_iov(self, tag_id: int, payload_id: int, iov: str) -> requests.Response:
        return self.write("POST", f"globalTagPayload/{tag_id},{payload_id}/payloadIov/{iov}")


@pytest.fixture
def api(services: DevServices, config: DevServicesConfig) -> Api:
    services.conddb_state.reset()
    return Api(services.conddb_url, config.conddb_token)


def assert_error(response: requests.Response, status: int, message_part: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == status
    assert body["reason"]
    assert message_part in body["message"]


def test_reads_are_open_and_writes_need_the_token(api: Api) -> None:
    assert api.get("globalTags").json() == []
    assert api.session.head(f"{api.base_url}/v2/globalTags", timeout=10).status_code == 200

    missing = api.session.post(f"{api.base_url}/v2/globalTag/DEV", json={"name": "t"}, timeout=10)
    assert_error(missing, 401, "X-Authorization")
    wrong = api.session.post(
        f"{api.base_url}/v2/globalTag/DEV",
        json={"name": "t"},
        headers={"X-Authorization": "Bearer not-the-token"},
        timeout=10,
    )
    assert_error(wrong, 401, "invalid")
    assert api.get("globalTags").json() == []


def test_global_tag_fields_and_errors(api: Api) -> None:
    created = api.create_tag("staging_prompt_b1")
    assert created["name"] == "staging_prompt_b1"
    assert created["globalTagType"]["name"] == "DEV"
    assert created["globalTagStatus"]["name"] == "OPEN"
    assert api.get("globalTag/staging_prompt_b1").json()["globalTagId"] == created["globalTagId"]

    assert_error(api.get("globalTag/missing"), 404, "missing")
    assert_error(
        api.write("POST", "globalTag/DEV", json={"name": "staging_prompt_b1"}), 409, "already exists"
    )
    assert_error(api.write("POST", "globalTag/TESTING", json={"name": "x"}), 400, "DEV, RELEASE")
    assert_error(api.write("POST", "globalTag/DEV", json={"name": "bad name"}), 400, "invalid")
    assert_error(api.get("no/such/endpoint"), 404, "Not Found")


def test_same_api_below_the_real_service_path(api: Api) -> None:
    api.create_tag("both_paths")
    response = api.session.get(f"{api.base_url}/b2s/rest/v2/globalTag/both_paths", timeout=10)
    assert response.status_code == 200
    assert response.json()["name"] == "both_paths"


ALLOWED = {
    "OPEN": {"TESTING", "RUNNING"},
    "TESTING": {"VALIDATED", "OPEN"},
    "VALIDATED": {"PUBLISHED", "OPEN"},
    "PUBLISHED": {"INVALID"},
    "INVALID": set(),
    "RUNNING": set(),
}
#: How to reach each state from OPEN.
PATHS = {
    "OPEN": [],
    "TESTING": ["TESTING"],
    "VALIDATED": ["TESTING", "VALIDATED"],
    "PUBLISHED": ["TESTING", "VALIDATED", "PUBLISHED"],
    "INVALID": ["TESTING", "VALIDATED", "PUBLISHED", "INVALID"],
    "RUNNING": ["RUNNING"],
}


@pytest.mark.parametrize("start", list(ALLOWED))
@pytest.mark.parametrize("target", list(ALLOWED))
def test_state_machine(api: Api, start: str, target: str) -> None:
    api.create_tag("tag")
    for state in PATHS[start]:
        assert api.set_state("tag", state).status_code == 200
    response = api.set_state("tag", target)
    if target in ALLOWED[start]:
        assert response.status_code == 200, response.text
        assert response.json()["globalTagStatus"]["name"] == target
    else:
        assert_error(response, 409, f"from {start} to {target}")
        assert api.get("globalTag/tag").json()["globalTagStatus"]["name"] == start


def test_unknown_state_is_400(api: Api) -> None:
    api.create_tag("tag")
    assert_error(api.set_state("tag", "FROZEN"), 400, "FROZEN")


def test_payload_revisions_and_checksum(api: Api) -> None:
    first = api.upload("BeamSpot", b"first")
    second = api.upload("BeamSpot", b"second")
    other = api.upload("CDCT0", b"first")
    assert (first["revision"], second["revision"], other["revision"]) == (1, 2, 1)
    assert first["checksum"] == hashlib.md5(b"first").hexdigest()
    assert first["basf2Module"]["name"] == "BeamSpot"
    assert first["payloadUrl"] == "dbstore/BeamSpot/dbstore_BeamSpot_rev_1.root"

    download = requests.get(f"{first['baseUrl']}{first['payloadUrl']}", timeout=10)
    assert download.content == b"first"

    wrong = api.write(
        "POST",
        "package/dbstore/module/BeamSpot/payload",
        files={"file": ("x.root", b"data")},
        data={"checksum": hashlib.md5(b"other").hexdigest()},
    )
    assert_error(wrong, 400, hashlib.md5(b"data").hexdigest())
    no_checksum = api.write(
        "POST", "package/dbstore/module/BeamSpot/payload", files={"file": ("x.root", b"d")}
    )
    assert_error(no_checksum, 400, "checksum")


def test_upload_as_multipart_mixed_with_json_part(api: Api) -> None:
    data = bytes(range(256)) * 4 + b"\r\n--\r\n"
    fields = []
    for name, contents, mimetype in (
        ("payload.root", data, "application/x-root"),
        ("json", json.dumps({"checksum": hashlib.md5(data).hexdigest()}).encode(), "application/json"),
    ):
        field = RequestField(name=name, data=contents, filename=name if name != "json" else None)
        field.make_multipart(content_type=mimetype)
        fields.append(field)
    body, content_type = encode_multipart_formdata(fields)
    mixed = "multipart/mixed" + content_type.partition(";")[1] + content_type.partition(";")[2]
    response = api.write(
        "POST", "package/dbstore/module/ECLCrystalEnergy/payload", data=body, headers={"Content-Type": mixed}
    )
    assert response.status_code == 201, response.text
    stored = response.json()
    assert stored["checksum"] == hashlib.md5(data).hexdigest()
    assert requests.get(f"{stored['baseUrl']}{stored['payloadUrl']}", timeout=10).content == data


def test_check_payloads_finds_name_and_checksum(api: Api) -> None:
    stored = api.upload("BeamSpot", b"content")
    query = [
        {"name": "BeamSpot", "checksum": stored["checksum"]},
        {"name": "BeamSpot", "checksum": hashlib.md5(b"other").hexdigest()},
        {"name": "CDCT0", "checksum": stored["checksum"]},
    ]
    response = api.session.post(f"{api.base_url}/v2/checkPayloads", json=query, timeout=10)
    assert response.status_code == 200
    assert [item["payloadId"] for item in response.json()] == [stored["payloadId"]]


def test_iovs_in_open_tag_and_listing(api: Api) -> None:
    tag = api.create_tag("open_tag")
    payload = api.upload("BeamSpot", b"a")
    created = api.add_iov(tag["globalTagId"], payload["payloadId"], "24,0,24,-1")
    assert created.status_code == 201
    assert created.json()["expEnd"] == 24
    assert created.json()["runEnd"] == -1
    assert api.add_iov(tag["globalTagId"], payload["payloadId"], "25,0,-1,-1").status_code == 201
    assert_error(api.add_iov(tag["globalTagId"], payload["payloadId"], "25,10,25,5"), 400, "ends before")
    assert_error(api.add_iov(tag["globalTagId"], 999, "25,0,-1,-1"), 404, "999")

    contents = api.get("globalTag/open_tag/globalTagPayloads").json()
    assert len(contents) == 1
    assert contents[0]["payloadId"]["payloadId"] == payload["payloadId"]
    assert [
        (iov["expStart"], iov["runStart"], iov["expEnd"], iov["runEnd"]) for iov in contents[0]["payloadIovs"]
    ] == [
        (24, 0, 24, -1),
        (25, 0, -1, -1),
    ]

    at_run = api.get("iovPayloads", params={"gtName": "open_tag", "expNumber": 24, "runNumber": 500}).json()
    assert [(item["payload"]["payloadId"], item["payloadIov"]["expEnd"]) for item in at_run] == [
        (payload["payloadId"], 24)
    ]
    assert_error(api.get("iovPayloads"), 400, "gtName")


def test_change_and_delete_iov_in_open_tag(api: Api) -> None:
    tag = api.create_tag("open_tag")
    payload = api.upload("BeamSpot", b"a")
    iov_id = api.add_iov(tag["globalTagId"], payload["payloadId"], "24,0,-1,-1").json()["payloadIovId"]
    changed = api.write("PUT", f"payloadIov/{iov_id}", json={"expEnd": 24, "runEnd": 99})
    assert changed.status_code == 200
    assert (changed.json()["expStart"], changed.json()["runEnd"]) == (24, 99)
    assert api.write("DELETE", f"payloadIov/{iov_id}").status_code == 204
    assert api.get("globalTag/open_tag/globalTagPayloads").json() == []
    assert_error(api.write("DELETE", f"payloadIov/{iov_id}"), 404, str(iov_id))


def test_frozen_tags_reject_iov_changes(api: Api) -> None:
    tag = api.create_tag("frozen")
    payload = api.upload("BeamSpot", b"a")
    iov_id = api.add_iov(tag["globalTagId"], payload["payloadId"], "24,0,-1,-1").json()["payloadIovId"]
    api.set_state("frozen", "TESTING")
    assert_error(api.add_iov(tag["globalTagId"], payload["payloadId"], "25,0,-1,-1"), 409, "TESTING")
    assert_error(api.write("PUT", f"payloadIov/{iov_id}", json={"expEnd": 24, "runEnd": 5}), 409, "TESTING")
    assert_error(api.write("DELETE", f"payloadIov/{iov_id}"), 409, "TESTING")


def test_running_tag_accepts_only_new_runs(api: Api) -> None:
    tag = api.create_tag("running")
    old = api.upload("BeamSpot", b"old")
    other = api.upload("CDCT0", b"other")
    new = api.upload("BeamSpot", b"new")
    beam_iov = api.add_iov(tag["globalTagId"], old["payloadId"], "26,0,-1,-1").json()["payloadIovId"]
    cdc_iov = api.add_iov(tag["globalTagId"], other["payloadId"], "26,100,-1,-1").json()["payloadIovId"]
    assert api.set_state("running", "RUNNING").status_code == 200

    assert_error(api.add_iov(tag["globalTagId"], new["payloadId"], "26,50,-1,-1"), 409, "new runs")
    assert_error(api.add_iov(tag["globalTagId"], new["payloadId"], "26,200,-1,-1"), 409, "overlaps")
    assert_error(api.write("DELETE", f"payloadIov/{beam_iov}"), 409, "RUNNING")
    closing_too_early = api.write("PUT", f"payloadIov/{beam_iov}", json={"expEnd": 26, "runEnd": 49})
    assert_error(closing_too_early, 409, "uncover")
    moving_start = api.write(
        "PUT", f"payloadIov/{beam_iov}", json={"runStart": 5, "expEnd": 26, "runEnd": 199}
    )
    assert_error(moving_start, 409, "only the end")

    closed = api.write("PUT", f"payloadIov/{beam_iov}", json={"expEnd": 26, "runEnd": 199})
    assert closed.status_code == 200, closed.text
    assert api.add_iov(tag["globalTagId"], new["payloadId"], "26,200,-1,-1").status_code == 201
    closed_other = api.write("PUT", f"payloadIov/{cdc_iov}", json={"expEnd": 26, "runEnd": 199})
    assert closed_other.status_code == 200, closed_other.text
    assert_error(
        api.write("PUT", f"payloadIov/{cdc_iov}", json={"expEnd": 26, "runEnd": 300}), 409, "only the end"
    )


def test_clone_copies_iovs(api: Api) -> None:
    tag = api.create_tag("source")
    payload = api.upload("BeamSpot", b"a")
    api.add_iov(tag["globalTagId"], payload["payloadId"], "24,0,-1,-1")
    api.set_state("source", "TESTING")
    clone = api.write("POST", f"globalTags/{tag['globalTagId']}", json={"name": "copy"})
    assert clone.status_code == 201, clone.text
    assert clone.json()["globalTagStatus"]["name"] == "OPEN"
    copied = api.get("globalTag/copy/globalTagPayloads").json()
    assert copied[0]["payloadId"]["payloadId"] == payload["payloadId"]
    assert_error(api.write("POST", "globalTags/999", json={"name": "copy2"}), 404, "999")


def test_dev_state_and_reset(services: DevServices, api: Api) -> None:
    api.create_tag("listed")
    state = requests.get(f"{services.conddb_url}/_dev/state", timeout=10).json()
    assert [tag["name"] for tag in state["globalTags"]] == ["listed"]
    assert requests.post(f"{services.conddb_url}/_dev/reset", timeout=10).status_code == 204
    assert api.get("globalTags").json() == []

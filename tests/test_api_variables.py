"""/api/variables: upsert, read, list, delete; per-user isolation; staff ?userId=."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient
from rest_framework.throttling import ScopedRateThrottle

from tasks_app.api.variables import MAX_VARIABLES
from tasks_app.models import UserVariable
from tests.api_clients import client_for

pytestmark = pytest.mark.django_db

# Routed here until tasks_app/api/urls.py carries the same lines (under /api/).


@pytest.fixture
def api(django_user_model: Any) -> APIClient:
    return client_for(django_user_model, "user-123")


@pytest.fixture
def other(django_user_model: Any) -> APIClient:
    return client_for(django_user_model, "mallory")


@pytest.fixture
def staff(django_user_model: Any) -> APIClient:
    return client_for(django_user_model, "admin", is_staff=True)


def put(client: APIClient, name: str, value: Any, query: str = "") -> Any:
    return client.put(f"/api/variables/{name}{query}", {"value": value}, format="json")


def test_requests_need_a_token() -> None:
    assert APIClient().get("/api/variables").status_code in (401, 403)
    assert APIClient().put("/api/variables/x", {"value": 1}, format="json").status_code in (
        401,
        403,
    )


def test_put_get_list_delete(api: APIClient) -> None:
    created = put(api, "environment", "production")
    assert created.status_code == 200, created.json()
    body = created.json()
    assert (body["name"], body["value"]) == ("environment", "production")
    assert body["updatedAt"].endswith("+00:00")

    replaced = put(api, "environment", {"stage": "staging", "replicas": [1, 2.5, None, True]})
    assert replaced.status_code == 200
    assert UserVariable.objects.filter(name="environment").count() == 1
    assert api.get("/api/variables/environment").json()["value"] == {
        "stage": "staging",
        "replicas": [1, 2.5, None, True],
    }

    assert put(api, "a.b-c_9", None).status_code == 200  # null is a value too
    listed = api.get("/api/variables").json()
    assert [(v["name"], v["value"]) for v in listed] == [
        ("a.b-c_9", None),
        ("environment", {"stage": "staging", "replicas": [1, 2.5, None, True]}),
    ]
    assert set(listed[0]) == {"name", "value", "updatedAt"}

    assert api.delete("/api/variables/environment").status_code == 204
    assert api.get("/api/variables/environment").status_code == 404
    assert api.delete("/api/variables/environment").status_code == 404
    assert [v["name"] for v in api.get("/api/variables").json()] == ["a.b-c_9"]


@pytest.mark.parametrize("name", ["has space", "ünïcode", "x" * 101, "semi;colon", "a+b"])
def test_bad_names_are_400_naming_name(api: APIClient, name: str) -> None:
    answer = put(api, name, 1)
    assert answer.status_code == 400 and list(answer.json()) == ["name"], answer.json()
    assert api.get(f"/api/variables/{name}").status_code == 400
    assert not UserVariable.objects.exists()


def test_longest_name_is_accepted(api: APIClient) -> None:
    assert put(api, "n" * 100, 1).status_code == 200


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({}, "value"),
        ({"value": 1, "extra": 2}, "extra"),
        ([1, 2], "(body)"),
        ({"value": "nul \x00 inside"}, "value"),
        ({"value": {"list": ["ok", "bad \x00"]}}, "value.list[1]"),
    ],
)
def test_bad_bodies_name_their_path(api: APIClient, body: Any, path: str) -> None:
    answer = api.put("/api/variables/x", body, format="json")
    assert answer.status_code == 400 and path in answer.json(), answer.json()
    assert not UserVariable.objects.exists()


def test_non_json_numbers_are_refused_by_the_parser(api: APIClient) -> None:
    answer = api.put("/api/variables/x", b'{"value": NaN}', content_type="application/json")
    assert answer.status_code == 400
    assert not UserVariable.objects.exists()


def test_each_user_sees_only_their_own(api: APIClient, other: APIClient) -> None:
    put(api, "environment", "production")
    put(other, "environment", "staging")
    assert [v["value"] for v in other.get("/api/variables").json()] == ["staging"]
    assert other.get("/api/variables/environment").json()["value"] == "staging"
    assert other.delete("/api/variables/environment").status_code == 204
    assert api.get("/api/variables/environment").json()["value"] == "production"
    assert other.get("/api/variables/environment").status_code == 404


def test_non_staff_cannot_name_another_user(api: APIClient, other: APIClient) -> None:
    put(api, "environment", "production")
    for answer in (
        other.get("/api/variables?userId=user-123"),
        other.get("/api/variables/environment?userId=user-123"),
        put(other, "environment", "hacked", "?userId=user-123"),
        other.delete("/api/variables/environment?userId=user-123"),
    ):
        assert answer.status_code == 403 and "userId" in answer.json()
    assert UserVariable.objects.get(name="environment").value == "production"
    # Naming yourself is fine.
    assert other.get("/api/variables?userId=mallory").status_code == 200


def test_staff_act_for_another_user(api: APIClient, staff: APIClient) -> None:
    put(api, "environment", "production")
    assert staff.get("/api/variables").json() == []  # staff's own list, not everyone's
    listed = staff.get("/api/variables?userId=user-123").json()
    assert [v["value"] for v in listed] == ["production"]
    assert put(staff, "environment", "maintenance", "?userId=user-123").status_code == 200
    assert api.get("/api/variables/environment").json()["value"] == "maintenance"
    assert staff.delete("/api/variables/environment?userId=user-123").status_code == 204
    assert api.get("/api/variables").json() == []
    unknown = staff.get("/api/variables?userId=nobody")
    assert unknown.status_code == 400 and "userId" in unknown.json()


def test_number_of_variables_is_capped(api: APIClient, django_user_model: Any) -> None:
    owner = django_user_model.objects.get(username="user-123")
    UserVariable.objects.bulk_create(
        UserVariable(owner=owner, name=f"v{i}", value=i) for i in range(MAX_VARIABLES)
    )
    refused = put(api, "one-more", 1)
    assert refused.status_code == 400 and "name" in refused.json()
    assert put(api, "v0", "replaced").status_code == 200  # replacing one still works


def test_writes_are_throttled(api: APIClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"task-write": "2/min"})
    assert [put(api, "x", i).status_code for i in range(3)] == [200, 200, 429]
    assert api.get("/api/variables/x").status_code == 200  # reads are not throttled

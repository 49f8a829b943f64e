"""/api/integrations/google: shape checks, encryption at rest, answers without secrets."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.db import connection
from rest_framework.test import APIClient

from executors.google_workspace import build_credentials
from tasks_app.fields import decrypt
from tasks_app.models import GoogleCredential
from tasks_app.services.host import Host
from tests.api_clients import client_for

pytestmark = pytest.mark.django_db

URL = "/api/integrations/google"
# Routed here until tasks_app/api/urls.py carries the same line (under /api/).

CLIENT_SECRET = "GOCSPX-client-secret-do-not-echo"
REFRESH_TOKEN = "1//0g-refresh-token-do-not-echo"


@cache
def rsa_pem() -> str:
    """One real RSA key per test run (generating one costs tens of milliseconds)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def key_body() -> str:
    """A stretch of the key's base64 that appears in no other text."""
    return rsa_pem().splitlines()[5]


def service_account(**changes: Any) -> dict[str, Any]:
    """A service-account key file as Google issues it."""
    info = {
        "type": "service_account",
        "project_id": "my-project",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": rsa_pem(),
        "client_email": "scheduler@my-project.iam.gserviceaccount.com",
        "client_id": "104242424242424242424",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/x",
        "universe_domain": "googleapis.com",
    }
    info.update(changes)
    return {key: value for key, value in info.items() if value is not None}


def authorized_user(**changes: Any) -> dict[str, Any]:
    info = {
        "type": "authorized_user",
        "client_id": "1234.apps.googleusercontent.com",
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH_TOKEN,
    }
    info.update(changes)
    return {key: value for key, value in info.items() if value is not None}


@pytest.fixture
def api(django_user_model: Any) -> APIClient:
    return client_for(django_user_model, "user-123")


@pytest.fixture
def other(django_user_model: Any) -> APIClient:
    return client_for(django_user_model, "mallory", is_staff=True)


def assert_no_secrets(answer: Any) -> None:
    text = answer.content.decode()
    for secret in ("PRIVATE KEY", key_body(), CLIENT_SECRET, REFRESH_TOKEN):
        assert secret not in text


def raw_column(owner_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT credentials FROM google_credentials WHERE owner_id = %s", [owner_id])
        row = cursor.fetchone()
    assert row is not None
    return str(row[0])


def test_requests_need_a_token() -> None:
    assert APIClient().get(URL).status_code in (401, 403)
    assert APIClient().put(URL, authorized_user(), format="json").status_code in (401, 403)


def test_service_account_round_trip(api: APIClient) -> None:
    assert api.get(URL).status_code == 404
    stored = api.put(URL, service_account(subject="reports@example.com"), format="json")
    assert stored.status_code == 200, stored.json()
    summary = stored.json()
    assert set(summary) == {"type", "clientEmail", "clientId", "subject", "updatedAt"}
    assert summary["type"] == "service_account"
    assert summary["clientEmail"] == "scheduler@my-project.iam.gserviceaccount.com"
    assert summary["clientId"] == "104242424242424242424"
    assert summary["subject"] == "reports@example.com"
    assert summary["updatedAt"].endswith("+00:00")
    assert_no_secrets(stored)

    fetched = api.get(URL)
    assert fetched.status_code == 200 and fetched.json() == summary
    assert_no_secrets(fetched)

    assert api.delete(URL).status_code == 204
    assert api.get(URL).status_code == 404
    assert api.delete(URL).status_code == 404
    assert not GoogleCredential.objects.exists()


def test_column_holds_ciphertext_of_only_the_fields_used(api: APIClient) -> None:
    api.put(URL, service_account(), format="json")
    row = GoogleCredential.objects.get()
    raw = raw_column(row.owner_id)
    assert raw.startswith("gAAAAA")  # a Fernet token
    for plain in ("PRIVATE KEY", key_body(), "scheduler@my-project", "service_account"):
        assert plain not in raw
    stored = json.loads(decrypt(raw))
    assert stored == row.credentials
    assert set(stored) == {
        "type",
        "project_id",
        "private_key_id",
        "private_key",
        "client_email",
        "client_id",
    }  # token_uri and the other URLs of the key file are not kept
    assert stored["private_key"] == rsa_pem()


def test_authorized_user_round_trip(api: APIClient) -> None:
    stored = api.put(URL, authorized_user(quota_project_id="billing"), format="json")
    assert stored.status_code == 200, stored.json()
    summary = stored.json()
    assert set(summary) == {"type", "clientId", "updatedAt"}
    assert summary["clientId"] == "1234.apps.googleusercontent.com"
    assert_no_secrets(stored)
    assert_no_secrets(api.get(URL))
    raw = raw_column(GoogleCredential.objects.get().owner_id)
    assert CLIENT_SECRET not in raw and REFRESH_TOKEN not in raw
    assert GoogleCredential.objects.get().credentials == {
        "type": "authorized_user",
        "client_id": "1234.apps.googleusercontent.com",
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH_TOKEN,
        "quota_project_id": "billing",
    }


def test_put_replaces_and_the_executor_can_use_what_is_stored(
    api: APIClient, django_user_model: Any
) -> None:
    api.put(URL, authorized_user(), format="json")
    replaced = api.put(URL, service_account(subject="boss@example.com"), format="json")
    assert replaced.status_code == 200 and replaced.json()["type"] == "service_account"
    assert GoogleCredential.objects.count() == 1
    owner = django_user_model.objects.get(username="user-123")

    class Execution:  # what Host reads: execution.task.owner_id
        class task:  # noqa: N801
            owner_id = owner.pk

    info = Host(Execution()).google_credentials()  # type: ignore[arg-type]
    assert info is not None
    credentials = build_credentials(info, "gmail")
    assert credentials.service_account_email == "scheduler@my-project.iam.gserviceaccount.com"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (service_account(private_key=None), "private_key"),
        (service_account(private_key=""), "private_key"),
        (service_account(client_email=None), "client_email"),
        (service_account(client_email="not an address"), "client_email"),
        (service_account(subject="two\nlines@example.com"), "subject"),
        (service_account(private_key=12345), "private_key"),
        (service_account(client_id="x" * 5000), "client_id"),
        (authorized_user(client_secret=None), "client_secret"),
        (authorized_user(refresh_token=None), "refresh_token"),
        (authorized_user(client_id=None), "client_id"),
        (authorized_user(subject="someone@example.com"), "subject"),
        ({**authorized_user(), "type": "external_account"}, "type"),
        ({"client_id": "x"}, "type"),
        ({**service_account(), "type": {}}, "type"),
        ({**service_account(), "type": ["service_account"]}, "type"),
        (["not", "an", "object"], "(body)"),
        (authorized_user(client_secret="nul\x00"), "client_secret"),
    ],
)
def test_bad_shapes_are_400_naming_the_field(api: APIClient, body: Any, field: str) -> None:
    answer = api.put(URL, body, format="json")
    assert answer.status_code == 400 and field in answer.json(), answer.json()
    assert_no_secrets(answer)
    assert not GoogleCredential.objects.exists()


def test_an_unusable_private_key_is_refused_without_echoing_it(api: APIClient) -> None:
    mangled = rsa_pem().replace(key_body(), key_body()[::-1])
    answer = api.put(URL, service_account(private_key=mangled), format="json")
    assert answer.status_code == 400 and list(answer.json()) == ["private_key"]
    assert_no_secrets(answer)
    assert key_body()[::-1] not in answer.content.decode()


def test_a_non_rsa_key_is_refused(api: APIClient) -> None:
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    answer = api.put(URL, service_account(private_key=ec_pem), format="json")
    assert answer.status_code == 400 and "private_key" in answer.json()


def test_a_traditional_rsa_pem_is_accepted(api: APIClient) -> None:
    key = serialization.load_pem_private_key(rsa_pem().encode(), password=None)
    traditional = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    assert "BEGIN RSA PRIVATE KEY" in traditional
    assert api.put(URL, service_account(private_key=traditional), format="json").status_code == 200


def test_a_failed_put_keeps_the_stored_credentials(api: APIClient) -> None:
    api.put(URL, authorized_user(), format="json")
    assert api.put(URL, service_account(private_key=None), format="json").status_code == 400
    assert GoogleCredential.objects.get().credentials["refresh_token"] == REFRESH_TOKEN


def test_each_user_has_their_own_even_staff(api: APIClient, other: APIClient) -> None:
    api.put(URL, service_account(), format="json")
    assert other.get(URL).status_code == 404
    assert other.get(f"{URL}?userId=user-123").status_code == 404
    assert other.delete(URL).status_code == 404
    other.put(URL, authorized_user(), format="json")
    assert api.get(URL).json()["type"] == "service_account"
    assert other.get(URL).json()["type"] == "authorized_user"
    assert GoogleCredential.objects.count() == 2

"""executors.registry and the system checks that prove every action type is covered."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from django.core import checks as django_checks

import executors
from executors.base import ActionConfig, ActionResult, ExecutionContext, Executor, error_path
from executors.errors import (
    ConfigError,
    DuplicateExecutor,
    ExecutorError,
    PermanentError,
    RetryableError,
    UnknownActionType,
)
from executors.registry import Registry
from executors.webhook import WebhookExecutor
from tasks_app import checks
from tasks_app.models import ActionType


class EchoConfig(ActionConfig):
    type: str
    text: str


class Echo(Executor[EchoConfig]):
    action_type: ClassVar[str] = "echo"
    Config = EchoConfig

    def execute(self, config: EchoConfig, ctx: ExecutionContext) -> ActionResult:
        return ActionResult(output=config.text)


class OtherWebhook(Echo):
    action_type: ClassVar[str] = "webhook"


class Nameless(Echo):
    action_type: ClassVar[str] = ""


# --- Registry ------------------------------------------------------------------------


def test_register_returns_the_executor_and_get_finds_it() -> None:
    registry = Registry()
    echo = Echo()
    assert registry.register(echo) is echo
    assert registry.get("echo") is echo
    assert "echo" in registry
    assert "webhook" not in registry


def test_register_refuses_a_duplicate_naming_both() -> None:
    registry = Registry()
    first = registry.register(WebhookExecutor())
    with pytest.raises(DuplicateExecutor) as caught:
        registry.register(OtherWebhook())
    assert str(caught.value) == (
        "action type 'webhook' is already handled by <WebhookExecutor webhook>; "
        "refusing <OtherWebhook webhook>"
    )
    assert registry.get("webhook") is first


def test_register_refuses_the_same_class_twice() -> None:
    registry = Registry()
    registry.register(Echo())
    with pytest.raises(DuplicateExecutor, match="'echo' is already handled by <Echo echo>"):
        registry.register(Echo())


def test_register_refuses_an_executor_without_action_type() -> None:
    with pytest.raises(TypeError, match=r"^<Nameless > has no action_type$"):
        Registry().register(Nameless())


def test_get_unknown_names_the_available_types() -> None:
    registry = Registry()
    registry.register(WebhookExecutor())
    registry.register(Echo())
    with pytest.raises(UnknownActionType) as caught:
        registry.get("send-email")
    assert str(caught.value) == (
        "no executor for action type 'send-email' (available: echo, webhook)"
    )


def test_get_from_an_empty_registry_says_none_available() -> None:
    with pytest.raises(UnknownActionType) as caught:
        Registry().get("webhook")
    assert str(caught.value) == "no executor for action type 'webhook' (available: none)"


def test_iteration_is_sorted() -> None:
    registry = Registry()
    registry.register(WebhookExecutor())
    registry.register(Echo())
    assert list(registry) == ["echo", "webhook"]


def test_default_registry_has_webhook() -> None:
    assert "webhook" in executors.registry
    assert isinstance(executors.registry.get("webhook"), WebhookExecutor)
    assert set(executors.registry) <= set(ActionType.values)
    assert {"ai-prompt", "send-email", "webhook", "chain", "run-code"} <= set(executors.registry)


# --- base and errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        ((), ""),
        (("url",), "url"),
        (("tasks", 2, "url"), "tasks[2].url"),
        (("headers", "X-Key"), "headers.X-Key"),
        ((0, "a", 1, 2), "[0].a[1][2]"),
    ],
)
def test_error_path(loc: tuple[Any, ...], path: str) -> None:
    assert error_path(loc) == path


def test_validate_returns_the_typed_config() -> None:
    config = Echo().validate({"type": "echo", "text": "hi"})
    assert config == EchoConfig(type="echo", text="hi")


def test_validate_collects_every_error_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        Echo().validate({"type": "echo", "text": 5, "extra": True})
    assert caught.value.errors == [
        ("text", "Input should be a valid string"),
        ("extra", "Extra inputs are not permitted"),
    ]
    assert str(caught.value) == (
        "text: Input should be a valid string; extra: Extra inputs are not permitted"
    )


def test_config_error_without_a_path_names_the_action() -> None:
    assert str(ConfigError([("", "must be an object")])) == "(action): must be an object"


def test_errors_default_to_their_docstring() -> None:
    assert str(RetryableError()) == (
        "A transient failure (timeout, connection refused, 429, 5xx); another attempt may succeed."
    )
    assert str(UnknownActionType()) == "No executor is registered for this action type."
    assert str(PermanentError("boom")) == "boom"
    assert issubclass(RetryableError, ExecutorError)
    assert not issubclass(RetryableError, PermanentError)


# --- system checks ---------------------------------------------------------------------


def test_check_executors_passes_with_the_real_registry() -> None:
    assert checks.check_executors() == []


def test_every_action_type_is_registered_or_planned() -> None:
    covered = set(executors.registry) | set(checks.PLANNED_ACTION_TYPES)
    assert covered == set(ActionType.values)


def test_check_executors_errors_for_a_type_with_neither_executor_nor_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(executors, "registry", Registry())
    problems = checks.check_executors()
    assert [(p.level, p.id, p.msg, p.hint) for p in problems] == [
        (
            django_checks.ERROR,
            "tasks_app.E001",
            f"action type {name!r} has no executor",
            "register one in executors/__init__.py",
        )
        for name in ActionType.values
        if name not in checks.PLANNED_ACTION_TYPES
    ]
    reported = django_checks.run_checks(tags=[django_checks.Tags.compatibility])
    assert "tasks_app.E001" in [p.id for p in reported]


def test_check_executors_warns_when_a_registered_type_is_still_planned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(checks, "PLANNED_ACTION_TYPES", frozenset({"webhook"}))
    problems = [p for p in checks.check_executors() if p.id == "tasks_app.W001"]
    assert [(p.level, p.id, p.msg) for p in problems] == [
        (
            django_checks.WARNING,
            "tasks_app.W001",
            "action type 'webhook' is registered but still listed as planned",
        )
    ]


def test_check_executors_errors_for_an_executor_of_an_unknown_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = Registry()
    for name in executors.registry:
        registry.register(executors.registry.get(name))
    registry.register(Echo())
    monkeypatch.setattr(executors, "registry", registry)
    problems = checks.check_executors()
    assert [(p.level, p.id, p.msg) for p in problems] == [
        (
            django_checks.ERROR,
            "tasks_app.E002",
            "executor registered for unknown action type 'echo'",
        )
    ]


def test_check_time_limits_errors_when_lease_reaches_visibility_timeout(settings: Any) -> None:
    settings.SCHEDULER_TASK_TIME_LIMIT = 900
    settings.SCHEDULER_LEASE_GRACE = 30
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 930}
    problems = checks.check_time_limits()
    assert [(p.level, p.id, p.msg, p.hint) for p in problems] == [
        (
            django_checks.ERROR,
            "tasks_app.E003",
            "SCHEDULER_TASK_TIME_LIMIT + SCHEDULER_LEASE_GRACE (930s) must be below the "
            "broker's visibility timeout (930s)",
            "raise CELERY_VISIBILITY_TIMEOUT or lower SCHEDULER_TASK_TIME_LIMIT",
        )
    ]
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 600}
    assert [p.id for p in checks.check_time_limits()] == ["tasks_app.E003"]
    assert "tasks_app.E003" in [p.id for p in django_checks.run_checks()]


def test_check_time_limits_passes_below_visibility_timeout(settings: Any) -> None:
    settings.SCHEDULER_TASK_TIME_LIMIT = 900
    settings.SCHEDULER_LEASE_GRACE = 30
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 931}
    assert checks.check_time_limits() == []


def test_check_time_limits_passes_without_visibility_timeout(settings: Any) -> None:
    settings.SCHEDULER_TASK_TIME_LIMIT = 100_000
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": "/tmp/q"}
    assert checks.check_time_limits() == []


@pytest.mark.parametrize(
    ("lead", "problems"),
    [(100, []), (0, []), (1000, []), (-1, ["tasks_app.E004"]), (5000, ["tasks_app.E004"])],
)
def test_check_beat_lead_keeps_it_within_a_second(
    settings: Any, lead: int, problems: list[str]
) -> None:
    settings.SCHEDULER_BEAT_LEAD_MS = lead
    assert [p.id for p in checks.check_beat_lead()] == problems

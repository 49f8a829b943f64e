"""OpenAPI components for the guide's JSON, built from the same typed models that
validate it (each action type its own schema, joined by a discriminator on ``type``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

import executors

from ..models import (
    ExecutionStatus,
    ExecutionTrigger,
    MisfirePolicy,
    OverlapPolicy,
    TaskStatus,
    TaskType,
)
from ..specs import Condition, Notification, RetryPolicy, Trigger
from ..validation import CATCHUP_WINDOW, GRACE, MAX_JITTER

REF = "#/components/schemas/{model}"

#: The body of a 400 (and 403/413) answer: each field path with its reasons.
ERRORS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {"type": "array", "items": {"type": "string"}},
    "description": "field path -> reasons",
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def page(items: dict[str, Any]) -> dict[str, Any]:
    """A LimitOffsetPagination answer whose ``results`` are ``items``."""
    return {
        "type": "object",
        "properties": {
            "count": {"type": "integer"},
            "next": {"type": "string", "nullable": True},
            "previous": {"type": "string", "nullable": True},
            "results": {"type": "array", "items": items},
        },
    }


def _model(schemas: dict[str, Any], name: str, model: type[BaseModel]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template=REF)
    schemas.update(schema.pop("$defs", {}))
    schema["title"] = name
    schemas[name] = schema
    return ref(name)


def _action_name(action_type: str) -> str:
    return "".join(part.title() for part in action_type.split("-")) + "Action"


def components() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    mapping = {
        action_type: _model(
            schemas, _action_name(action_type), executors.registry.get(action_type).Config
        )["$ref"]
        for action_type in executors.registry
    }
    schemas["Action"] = {
        "oneOf": [{"$ref": target} for target in mapping.values()],
        "discriminator": {"propertyName": "type", "mapping": mapping},
    }
    schedule = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "cron": {
                "type": "string",
                "example": "0 9 * * 1-5",
                "description": "5 fields; recurring tasks",
            },
            "timezone": {"type": "string", "example": "America/New_York", "default": "UTC"},
            "at": {
                "type": "string",
                "format": "date-time",
                "description": "one-time tasks; without offset it is read in timezone",
            },
            "misfirePolicy": {
                "type": "string",
                "enum": MisfirePolicy.values,
                "default": "runOnce",
                "description": "occurrences missed while the scheduler was down",
            },
            "catchupWindowSeconds": {
                "type": "integer",
                "minimum": CATCHUP_WINDOW[0],
                "maximum": CATCHUP_WINDOW[1],
                "default": 3600,
                "description": "runAll: how far back missed occurrences still run",
            },
            "overlapPolicy": {
                "type": "string",
                "enum": OverlapPolicy.values,
                "default": "skip",
                "description": "an occurrence while the previous run is still going",
            },
            "jitterSeconds": {"type": "integer", "minimum": 0, "maximum": MAX_JITTER, "default": 0},
            "startAt": {"type": "string", "format": "date-time", "nullable": True},
            "endAt": {"type": "string", "format": "date-time", "nullable": True},
            "graceSeconds": {
                "type": "integer",
                "minimum": GRACE[0],
                "maximum": GRACE[1],
                "nullable": True,
                "description": "late when a run has not started this long after its time",
            },
        },
    }
    common = {
        "name": {"type": "string", "maxLength": 200},
        "description": {"type": "string"},
        "type": {"type": "string", "enum": TaskType.values},
        "schedule": {**schedule, "nullable": True},
        "trigger": {**_model(schemas, "Trigger", Trigger), "nullable": True},
        "action": ref("Action"),
        "conditions": {"type": "array", "items": _model(schemas, "Condition", Condition)},
        "retryPolicy": _model(schemas, "RetryPolicy", RetryPolicy),
        "notification": _model(schemas, "Notification", Notification),
    }
    schemas["TaskInput"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "type", "action"],
        "properties": {"userId": {"type": "string"}, **common},
    }
    schemas["TaskUpdate"] = {k: v for k, v in schemas["TaskInput"].items() if k != "required"}
    stamp = {"type": "string", "format": "date-time", "nullable": True}
    schemas["Task"] = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "userId": {"type": "string"},
            **common,
            "status": {"type": "string", "enum": TaskStatus.values},
            "lastRun": stamp,
            "nextRun": stamp,
            "runCount": {"type": "integer"},
            "pauseReason": {"type": "string", "nullable": True},
            "emailAddress": {
                "type": "string",
                "nullable": True,
                "description": "email-triggered tasks: the address that starts them",
            },
            "createdAt": stamp,
            "updatedAt": stamp,
        },
    }
    schemas["Execution"] = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "taskId": {"type": "string"},
            "status": {"type": "string", "enum": ExecutionStatus.values},
            "trigger": {"type": "string", "enum": ExecutionTrigger.values},
            "scheduledFor": stamp,
            "startedAt": stamp,
            "completedAt": stamp,
            "durationMs": {"type": "integer", "nullable": True},
            "attempt": {"type": "integer"},
            "result": {},
            "error": {"type": "string", "nullable": True},
            "usage": {
                "type": "object",
                "properties": {
                    "inputTokens": {"type": "integer"},
                    "outputTokens": {"type": "integer"},
                },
            },
            "steps": {
                "type": "array",
                "description": "Chains: one entry per step (index, type, status, attempt, "
                "result, error, durationMs)",
                "items": {"type": "object"},
            },
            "logs": {"type": "array", "items": {"type": "object"}},
        },
    }
    return {name: to_openapi30(schema) for name, schema in schemas.items()}


def to_openapi30(node: Any) -> Any:
    """pydantic writes JSON Schema 2020-12; OpenAPI 3.0 wants its older dialect."""
    if isinstance(node, list):
        return [to_openapi30(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: to_openapi30(value) for key, value in node.items()}
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node[bound], bool):
            node[limit], node[bound] = node[bound], True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    options = node.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [option for option in options if option != {"type": "null"}]
        node.pop("anyOf")
        if len(rest) == 1:
            node.update(rest[0])
        else:
            node["anyOf"] = rest
        node["nullable"] = True
    return node


def add_components(result: dict[str, Any], generator: Any, request: Any, public: Any) -> Any:
    """drf-spectacular post-processing hook."""
    result.setdefault("components", {}).setdefault("schemas", {}).update(components())
    # The router accepts both spellings; document the guide's (no trailing slash).
    result["paths"] = {
        (path.rstrip("/") if path.startswith("/api/tasks") else path): item
        for path, item in result.get("paths", {}).items()
    }
    return result

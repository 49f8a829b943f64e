"""Action executors, one module per action type, registered explicitly below."""

from .registry import registry
from .webhook import WebhookExecutor

registry.register(WebhookExecutor())

__all__ = ("registry",)

"""Action executors, one module per action type, registered explicitly below."""

from .ai_prompt import AIPromptExecutor
from .registry import registry
from .send_email import SendEmailExecutor
from .webhook import WebhookExecutor

registry.register(AIPromptExecutor())
registry.register(SendEmailExecutor())
registry.register(WebhookExecutor())

__all__ = ("registry",)

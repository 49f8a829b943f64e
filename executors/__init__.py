"""Action executors, one module per action type, registered explicitly below (when the
registry is first used: importing the package stays cheap for processes that never run
an action)."""

from .registry import registry


def _register_builtin() -> None:
    from .ai_prompt import AIPromptExecutor
    from .chain import ChainExecutor
    from .file_operation import FileOperationExecutor
    from .generate_report import GenerateReportExecutor
    from .google_workspace import GoogleWorkspaceExecutor
    from .run_code import RunCodeExecutor
    from .send_email import SendEmailExecutor
    from .web_scrape import WebScrapeExecutor
    from .webhook import WebhookExecutor

    registry.register(AIPromptExecutor())
    registry.register(ChainExecutor())
    registry.register(FileOperationExecutor())
    registry.register(GenerateReportExecutor())
    registry.register(GoogleWorkspaceExecutor())
    registry.register(RunCodeExecutor())
    registry.register(SendEmailExecutor())
    registry.register(WebScrapeExecutor())
    registry.register(WebhookExecutor())


registry.defer(_register_builtin)

__all__ = ("registry",)

from django.apps import AppConfig


class TasksAppConfig(AppConfig):
    name = "tasks_app"
    verbose_name = "Scheduled tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, signals  # noqa: F401  (registers checks and receivers)

        self._hide_drf_token_admin()

    @staticmethod
    def _hide_drf_token_admin() -> None:
        """DRF's token admin would list key digests and make keys nobody ever sees
        (tokens are stored hashed: tasks_app.auth); keys come from drf_create_token."""
        from django.contrib import admin
        from rest_framework.authtoken.models import TokenProxy

        if admin.site.is_registered(TokenProxy):
            admin.site.unregister(TokenProxy)

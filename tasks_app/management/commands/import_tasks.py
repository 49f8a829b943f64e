"""`python manage.py import_tasks FILE --user NAME`: create the tasks of an export_tasks
file for a user, validated like the API, all or nothing."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from tasks_app.services.maintenance import MaintenanceError, command_progress, tasks_import


class Command(BaseCommand):
    help = (
        "Import task definitions (an export_tasks file, or a JSON list of tasks) for --user. "
        "Every task is validated as POST /api/tasks would; if any is wrong nothing is stored "
        "and each error is named as tasks[i].<field path>."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("file", help="the JSON file ('-' reads stdin)")
        parser.add_argument("--user", required=True, help="the owner of the imported tasks")
        parser.add_argument("--dry-run", action="store_true", help="validate, store nothing")
        parser.add_argument("--paused", action="store_true", help="import every task paused")
        parser.add_argument(
            "--skip-past",
            action="store_true",
            help="leave out one-time tasks whose time has passed (an error otherwise)",
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        owner = get_user_model().objects.filter(username=options["user"]).first()
        if owner is None:
            raise CommandError(f"no user named {options['user']!r}")
        document = self._read(options["file"])
        try:
            result = tasks_import(
                document=document,
                owner=owner,
                dry_run=options["dry_run"],
                paused=options["paused"],
                skip_past=options["skip_past"],
                progress=command_progress(self.stderr, no_progress=options["no_progress"]),
            )
        except MaintenanceError as exc:
            raise CommandError(str(exc)) from exc
        for line in result.skipped:
            self.stderr.write(f"skipped {line}")
        if result.errors:
            for line in result.errors:
                self.stderr.write(line)
            raise CommandError(f"{len(result.errors)} errors; nothing was imported")
        verb = "Would import" if result.dry_run else "Imported"
        self.stdout.write(
            f"{verb} {result.imported} tasks for {options['user']} ({len(result.skipped)} skipped)."
        )

    def _read(self, path: str) -> Any:
        try:
            if path == "-":
                return json.load(sys.stdin)
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise CommandError(f"{path} is not JSON: {exc}") from exc

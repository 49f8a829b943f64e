"""`python manage.py export_tasks [--user NAME] [--output FILE]`: task definitions as the
API's JSON (without runtime fields), for import_tasks."""

from __future__ import annotations

import json
import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from tasks_app.services.maintenance import command_progress, tasks_export


class Command(BaseCommand):
    help = (
        "Write task definitions as JSON ({'version': 1, 'exportedAt', 'tasks': [...]}). "
        "Actions may hold credentials (headers, API keys): the file is made readable by "
        "its owner only."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--user", help="only this user's tasks (default: everyone's)")
        parser.add_argument("--output", "-o", help="file to write (default: stdout)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        owner = None
        if options["user"]:
            owner = get_user_model().objects.filter(username=options["user"]).first()
            if owner is None:
                raise CommandError(f"no user named {options['user']!r}")
        document = tasks_export(
            owner=owner,
            progress=command_progress(self.stderr, no_progress=options["no_progress"]),
        )
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        output = options["output"]
        if not output or output == "-":
            self.stdout.write(text, ending="")
            return
        descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        self.stderr.write(f"Exported {len(document['tasks'])} tasks to {output}.")

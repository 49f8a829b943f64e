"""`python manage.py cleanup_executions --keep 100 --older-than-days 30`: delete finished
executions older than D days except each task's newest N, and old webhook replay records."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from tasks_app.services.maintenance import MaintenanceError, command_progress, executions_cleanup


def non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


class Command(BaseCommand):
    help = (
        "Delete finished (completed/failed/skipped) executions older than --older-than-days "
        "that are not among their task's --keep newest; queued, running and retrying ones "
        "always stay. Also prunes webhook delivery records older than max(days, 1)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--keep", type=non_negative, default=100, help="newest executions kept per task"
        )
        parser.add_argument(
            "--older-than-days",
            type=non_negative,
            default=30,
            help="only executions finished more than this many days ago go",
        )
        parser.add_argument("--batch", type=positive, default=1000, help="rows per DELETE")
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = executions_cleanup(
                keep=options["keep"],
                older_than_days=options["older_than_days"],
                batch=options["batch"],
                dry_run=options["dry_run"],
                progress=command_progress(self.stderr, no_progress=options["no_progress"]),
            )
        except MaintenanceError as exc:
            raise CommandError(str(exc)) from exc
        verb = "Would delete" if result.dry_run else "Deleted"
        self.stdout.write(
            f"{verb} {result.executions} executions and {result.deliveries} webhook deliveries "
            f"(kept the newest {options['keep']} per task and everything from the last "
            f"{options['older_than_days']} days)."
        )

"""`python manage.py backfill_task TASK_ID --start ISO --end ISO`: run the occurrences of
a recurring task in a past window that never ran (each once; a rerun queues nothing)."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from tasks_app.services.maintenance import MaintenanceError, command_progress, task_backfill


def moment(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 date or time") from None


class Command(BaseCommand):
    help = (
        "Queue every cron occurrence of a recurring task in [--start, --end) that has no "
        "execution yet (times without an offset are in the task's timezone). The window "
        "must be in the past and hold at most --max occurrences."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("task_id", help="the task's id (UUID)")
        parser.add_argument("--start", type=moment, required=True, help="first instant (incl.)")
        parser.add_argument("--end", type=moment, required=True, help="last instant (excl.)")
        parser.add_argument("--max", type=int, default=1000, help="refuse bigger windows")
        parser.add_argument("--dry-run", action="store_true", help="count, queue nothing")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = task_backfill(
                task_id=options["task_id"],
                start=options["start"],
                end=options["end"],
                max_occurrences=options["max"],
                dry_run=options["dry_run"],
                progress=command_progress(self.stderr, no_progress=options["no_progress"]),
            )
        except MaintenanceError as exc:
            raise CommandError(str(exc)) from exc
        queued = f"would queue {result.missing}" if result.dry_run else f"queued {result.queued}"
        self.stdout.write(
            f"{result.occurrences} occurrences in the window: {result.recorded_before} "
            f"already recorded, {queued}."
        )

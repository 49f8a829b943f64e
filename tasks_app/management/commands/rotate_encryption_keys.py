"""`python manage.py rotate_encryption_keys`: re-encrypt every secret at rest under the
newest key of FIELD_ENCRYPTION_KEYS.

Rotation: put a new key first in FIELD_ENCRYPTION_KEYS (keep the old ones after it),
restart, run this command, then drop the old keys.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import connection, transaction

from tasks_app import sealed
from tasks_app.fields import rotate
from tasks_app.models import ScheduledTask

# (table, primary key column, encrypted columns)
ENCRYPTED_COLUMNS = (
    ("task_webhooks", "id", ("secret", "previous_secret")),
    ("google_credentials", "id", ("credentials",)),
)


class Command(BaseCommand):
    help = "Re-encrypt every encrypted column under the newest FIELD_ENCRYPTION_KEYS key."

    def handle(self, *args: Any, **options: Any) -> None:
        total = 0
        with transaction.atomic(), connection.cursor() as cursor:
            for table, pk, columns in ENCRYPTED_COLUMNS:
                for column in columns:
                    total += self._rotate_column(cursor, table, pk, column)
            total += self._rotate_action_headers()
        self.stdout.write(f"re-encrypted {total} value(s) under the newest key")

    def _rotate_action_headers(self) -> int:
        """Sealed secret headers inside task actions (tasks_app.sealed)."""
        count = 0
        tasks = ScheduledTask._base_manager.filter(action__icontains=sealed.SEALED)
        for pk, action in tasks.values_list("pk", "action").iterator(chunk_size=500):
            ScheduledTask._base_manager.filter(pk=pk).update(action=sealed.resealed(action))
            count += str(action).count(sealed.SEALED)
        return count

    def _rotate_column(self, cursor: Any, table: str, pk: str, column: str) -> int:
        quote = connection.ops.quote_name
        cursor.execute(
            f"SELECT {quote(pk)}, {quote(column)} FROM {quote(table)} "
            f"WHERE {quote(column)} IS NOT NULL"
        )
        rows = cursor.fetchall()
        for key, token in rows:
            cursor.execute(
                f"UPDATE {quote(table)} SET {quote(column)} = %s WHERE {quote(pk)} = %s",
                [rotate(token), key],
            )
        return len(rows)

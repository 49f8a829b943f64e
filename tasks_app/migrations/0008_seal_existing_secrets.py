"""Secrets written before they were kept sealed: API tokens become digests (their keys
keep working, tasks_app.auth) and secret action headers are sealed (tasks_app.sealed)."""

from __future__ import annotations

from typing import Any

from django.db import migrations


def seal_existing(apps: Any, schema_editor: Any) -> None:
    from tasks_app import sealed
    from tasks_app.auth import token_digest

    token_model = apps.get_model("authtoken", "Token")
    for key in list(token_model.objects.values_list("key", flat=True)):
        token_model.objects.filter(key=key).update(key=token_digest(key))
    task_model = apps.get_model("tasks_app", "ScheduledTask")
    for pk, action in task_model.objects.values_list("pk", "action").iterator(chunk_size=500):
        if sealed.has_secrets(action):
            task_model.objects.filter(pk=pk).update(action=sealed.seal(action))


class Migration(migrations.Migration):
    dependencies = [
        ("authtoken", "0004_alter_tokenproxy_options"),
        ("tasks_app", "0007_calendar_feed"),
    ]

    operations = [migrations.RunPython(seal_existing, migrations.RunPython.noop, elidable=True)]

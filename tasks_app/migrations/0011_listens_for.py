"""ScheduledTask.listens_for: the event an event-triggered task listens to, indexed per
owner, so an emitted event (and every finished run's task.completed / task.failed) finds
its listeners without reading every trigger's JSON."""

from typing import Any

from django.conf import settings
from django.db import migrations, models


def fill(apps: Any, schema_editor: Any) -> None:
    ScheduledTask = apps.get_model("tasks_app", "ScheduledTask")
    listeners = ScheduledTask.objects.filter(type="trigger", trigger__type="event")
    for pk, trigger in listeners.values_list("pk", "trigger").iterator(chunk_size=1000):
        config = trigger.get("config") if isinstance(trigger, dict) else None
        event = config.get("event") if isinstance(config, dict) else None
        if isinstance(event, str):
            ScheduledTask.objects.filter(pk=pk).update(listens_for=event[:100])


class Migration(migrations.Migration):
    dependencies = [
        ("django_celery_beat", "0019_alter_periodictasks_options"),
        ("tasks_app", "0010_api_read_indexes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="scheduledtask",
            name="listens_for",
            field=models.CharField(blank=True, default="", editable=False, max_length=100),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name="scheduledtask",
            index=models.Index(
                condition=models.Q(("listens_for", ""), _negated=True),
                fields=["owner", "listens_for"],
                name="scheduled_owner_listens_for",
            ),
        ),
    ]

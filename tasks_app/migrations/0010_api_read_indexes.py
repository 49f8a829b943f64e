"""Indexes for the API's read paths at scale (bench.api, issue 9): a user's tasks newest
first (GET /api/tasks pages), the smallest graceSeconds among a user's tasks (late tasks in
GET /api/stats), and executions by queue time (GET /api/stats: the last 24 hours)."""

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_celery_beat", "0019_alter_periodictasks_options"),
        ("tasks_app", "0009_beat_changed_index"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddIndex(
            model_name="scheduledtask",
            index=models.Index(
                fields=["owner", "-created_at", "id"], name="scheduled_owner_recent"
            ),
        ),
        migrations.AddIndex(
            model_name="scheduledtask",
            index=models.Index(
                condition=models.Q(("grace_seconds__isnull", False)),
                fields=["owner", "grace_seconds"],
                name="scheduled_owner_grace",
            ),
        ),
        migrations.AddIndex(
            model_name="taskexecution",
            index=models.Index(fields=["queued_at"], name="execution_queued_at"),
        ),
    ]

"""An index on django-celery-beat's ``PeriodicTask.date_changed``: the project's beat
scheduler (tasks_app.beat) picks up only the rows changed since its last look."""

from django.db import migrations

INDEX = "tasks_app_periodictask_date_changed"


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0008_seal_existing_secrets"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.RunSQL(
            f"CREATE INDEX IF NOT EXISTS {INDEX} "
            "ON django_celery_beat_periodictask (date_changed)",
            f"DROP INDEX IF EXISTS {INDEX}",
        ),
    ]

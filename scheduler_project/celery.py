"""The Celery application: `celery -A scheduler_project worker|beat|flower`."""

import os

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

from .process import BEAT
from .transport import SCHEME

TRANSPORT_ALIASES.setdefault(SCHEME, "scheduler_project.transport:Transport")
TRANSPORT_ALIASES["redis"] = TRANSPORT_ALIASES["rediss"] = (
    "scheduler_project.transport:RedisTransport"
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_project.settings")
if BEAT:
    # Celery runs Django's system checks in every process it starts; in beat they would
    # only import the whole web application (~12 MB of a small process). The web server
    # and the workers still run them.
    os.environ.setdefault("CELERY_SKIP_CHECKS", "1")

app = Celery("scheduler_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
if not BEAT:
    # Beat sends every message by name (app.send_task): the task modules import the
    # executors, ~15 MiB that beat would hold and never use.
    app.autodiscover_tasks()

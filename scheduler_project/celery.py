"""The Celery application: `celery -A scheduler_project worker|beat|flower`."""

import os

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

from .transport import SCHEME

TRANSPORT_ALIASES.setdefault(SCHEME, "scheduler_project.transport:Transport")

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_project.settings")

app = Celery("scheduler_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

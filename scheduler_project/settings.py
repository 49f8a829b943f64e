"""Settings, read from the environment (see README "Configuration").

With no environment at all the system runs on the embedded default: SQLite and a
server-less Celery transport, both under ``SCHEDULER_DATA_DIR``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
from celery.schedules import crontab

from .process import BEAT

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DATA_DIR = (BASE_DIR / os.environ.get("SCHEDULER_DATA_DIR", "var")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _persistent_secret(filename: str) -> str:
    """A random secret made once and kept under the data dir (dev-safe default)."""
    path = DATA_DIR / filename
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or _persistent_secret("secret_key")


def _fernet_key_file(filename: str) -> str:
    path = DATA_DIR / filename
    if not path.exists():
        from cryptography.fernet import Fernet

        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(Fernet.generate_key().decode())
    return path.read_text().strip()


# Keys for secrets at rest (Fernet, newest first), separate from SECRET_KEY.
FIELD_ENCRYPTION_KEYS = env_list("FIELD_ENCRYPTION_KEYS") or [
    _fernet_key_file("field_encryption_key")
]
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    # Beat serves no page: the admin without autodiscovering every app's ModelAdmins
    # (scheduler_project.process).
    "django.contrib.admin.apps.SimpleAdminConfig" if BEAT else "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Before rest_framework.authtoken: its drf_create_token replaces DRF's (hashed tokens).
    "tasks_app",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_celery_beat",
    "django_celery_results",
]

# Browser pages (calendar) send people without a session here; any user may log in.
LOGIN_URL = "login"

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "scheduler_project.urls"
WSGI_APPLICATION = "scheduler_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],  # admin/base_site.html: the Calendar link
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'scheduler.sqlite3'}"
_db = dj_database_url.parse(DATABASE_URL, conn_max_age=0)
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers and one writer work together; IMMEDIATE takes the write lock at
    # BEGIN so two writers queue on busy_timeout instead of failing mid-transaction.
    _db["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": (
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
        ),
    }
else:
    _db["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60)
    _db["CONN_HEALTH_CHECKS"] = True
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT") or DATA_DIR / "static")
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Serve app static files (the admin) straight from their packages when not collected.
WHITENOISE_USE_FINDERS = True

# --- REST framework -------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tasks_app.auth.HashedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PARSER_CLASSES": ["tasks_app.api.parsers.SafeJSONParser"],
    "EXCEPTION_HANDLER": "tasks_app.api.common.exception_handler",
    "DEFAULT_THROTTLE_RATES": {
        "task-write": os.environ.get("SCHEDULER_THROTTLE_WRITES", "120/min"),
        "task-run": os.environ.get("SCHEDULER_THROTTLE_RUNS", "120/min"),
        "preview": os.environ.get("SCHEDULER_THROTTLE_PREVIEWS", "300/min"),
        "webhook": os.environ.get("SCHEDULER_THROTTLE_WEBHOOKS", "120/min"),
        "event": os.environ.get("SCHEDULER_THROTTLE_EVENTS", "120/min"),
    },
}
# Request bodies above this are answered 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("SCHEDULER_MAX_BODY_BYTES", 1024 * 1024)
SPECTACULAR_SETTINGS = {
    "TITLE": "Scheduled Tasks & Automation API",
    "VERSION": "0.1.0",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "tasks_app.api.openapi.add_components",
    ],
}

# --- Outgoing mail (Django's own names) -----------------------------------------
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "scheduler@localhost")

# --- Scheduler ---------------------------------------------------------------------
# Hard limit for one run of an action; a running execution's lease is this plus the
# grace, and the broker's visibility timeout must be longer still (checked at start).
SCHEDULER_TASK_TIME_LIMIT = env_int("SCHEDULER_TASK_TIME_LIMIT", 900)
SCHEDULER_LEASE_GRACE = env_int("SCHEDULER_LEASE_GRACE", 30)
SCHEDULER_MAX_DELIVERIES = env_int("SCHEDULER_MAX_DELIVERIES", 3)
SCHEDULER_RECOVERY_INTERVAL = env_int("SCHEDULER_RECOVERY_INTERVAL", 30)
SCHEDULER_REQUEUE_AFTER = env_int("SCHEDULER_REQUEUE_AFTER", 300)
# Time semantics (README "When does my task run?"): an occurrence fired more than
# SCHEDULER_MISFIRE_GRACE_SECONDS after its time is a misfire (the task's misfirePolicy
# decides); at most SCHEDULER_MAX_MISSED missed occurrences are recorded per catch-up and
# at most SCHEDULER_CATCHUP_MAX_RUNS of them run under runAll.
SCHEDULER_MISFIRE_GRACE_SECONDS = env_int("SCHEDULER_MISFIRE_GRACE_SECONDS", 60)
SCHEDULER_MAX_MISSED = env_int("SCHEDULER_MAX_MISSED", 1000)
SCHEDULER_CATCHUP_MAX_RUNS = env_int("SCHEDULER_CATCHUP_MAX_RUNS", 100)
# Dead-man's switch: a recurring task is late when its occurrence has not started this
# long after its time (per task: schedule.graceSeconds); checked every interval.
SCHEDULER_LATE_AFTER_SECONDS = env_int("SCHEDULER_LATE_AFTER_SECONDS", 300)
SCHEDULER_LATE_CHECK_INTERVAL = env_int("SCHEDULER_LATE_CHECK_INTERVAL", 60)
# History that does not grow without bound: every day at 03:17 UTC finished executions
# older than SCHEDULER_CLEANUP_OLDER_THAN_DAYS and beyond each task's newest
# SCHEDULER_CLEANUP_KEEP are deleted in batches (SCHEDULER_CLEANUP_KEEP=-1 turns it off).
SCHEDULER_CLEANUP_KEEP = env_int("SCHEDULER_CLEANUP_KEEP", 100)
SCHEDULER_CLEANUP_OLDER_THAN_DAYS = env_int("SCHEDULER_CLEANUP_OLDER_THAN_DAYS", 30)
# The beat scheduler (tasks_app.beat, README "Scale"): how often changed beat rows are
# read, how far back a late-committing change is still caught (writers' clocks must
# agree within it), and how many due schedules are fired per transaction.
SCHEDULER_BEAT_POLL_SECONDS = float(os.environ.get("SCHEDULER_BEAT_POLL_SECONDS", "0.5"))
SCHEDULER_BEAT_LOOKBACK_SECONDS = env_int("SCHEDULER_BEAT_LOOKBACK_SECONDS", 10)
SCHEDULER_BEAT_BATCH = env_int("SCHEDULER_BEAT_BATCH", 500)
#: How long before its time beat decides a due run (writes its ledger row), so that the
#: database work is done when the message goes out, on time.
SCHEDULER_BEAT_LEAD_MS = env_int("SCHEDULER_BEAT_LEAD_MS", 100)
SCHEDULER_EGRESS_ALLOW = env_list("SCHEDULER_EGRESS_ALLOW")
SCHEDULER_EGRESS_TIMEOUT = env_int("SCHEDULER_EGRESS_TIMEOUT", 30)
SCHEDULER_EGRESS_MAX_BYTES = env_int("SCHEDULER_EGRESS_MAX_BYTES", 5 * 1024 * 1024)
# The one sandbox for user code (run-code): bubblewrap, run as this uid, with these limits.
SCHEDULER_SANDBOX_BWRAP = os.environ.get("SCHEDULER_SANDBOX_BWRAP", "bwrap")
SCHEDULER_SANDBOX_UID = env_int("SCHEDULER_SANDBOX_UID", 65534)
SCHEDULER_SANDBOX_PYTHON = os.environ.get("SCHEDULER_SANDBOX_PYTHON", "/usr/bin/python3")
SCHEDULER_SANDBOX_NODE = os.environ.get("SCHEDULER_SANDBOX_NODE", "/usr/bin/node")
SCHEDULER_SANDBOX_TIMEOUT_SECONDS = env_int("SCHEDULER_SANDBOX_TIMEOUT_SECONDS", 30)
SCHEDULER_SANDBOX_MEMORY_MB = env_int("SCHEDULER_SANDBOX_MEMORY_MB", 256)
SCHEDULER_SANDBOX_DISK_MB = env_int("SCHEDULER_SANDBOX_DISK_MB", 64)
SCHEDULER_SANDBOX_PROCESSES = env_int("SCHEDULER_SANDBOX_PROCESSES", 32)
SCHEDULER_SANDBOX_OUTPUT_BYTES = env_int("SCHEDULER_SANDBOX_OUTPUT_BYTES", 256 * 1024)
# Inbound webhook bodies larger than this answer 413.
SCHEDULER_WEBHOOK_MAX_BYTES = env_int("SCHEDULER_WEBHOOK_MAX_BYTES", 256 * 1024)
# The address users reach this server at, for links in notifications (e.g. https://sched.example).
SCHEDULER_PUBLIC_URL = os.environ.get("SCHEDULER_PUBLIC_URL", "").rstrip("/")
# Web Push (VAPID): a PEM private key, or empty to make one under SCHEDULER_DATA_DIR.
SCHEDULER_VAPID_PRIVATE_KEY = os.environ.get("SCHEDULER_VAPID_PRIVATE_KEY", "")
SCHEDULER_VAPID_SUBJECT = os.environ.get("SCHEDULER_VAPID_SUBJECT", "mailto:admin@localhost")
# Each user's files (file-operation, e-mail attachments, backups) live under here.
SCHEDULER_FILES_DIR = Path(os.environ.get("SCHEDULER_FILES_DIR") or DATA_DIR / "files")
SCHEDULER_FILES_MAX_READ_BYTES = env_int("SCHEDULER_FILES_MAX_READ_BYTES", 1024 * 1024)
SCHEDULER_FILES_MAX_WRITE_BYTES = env_int("SCHEDULER_FILES_MAX_WRITE_BYTES", 10 * 1024 * 1024)
SCHEDULER_FILES_MAX_ARCHIVE_BYTES = env_int("SCHEDULER_FILES_MAX_ARCHIVE_BYTES", 1024**3)
SCHEDULER_FILES_MAX_ENTRIES = env_int("SCHEDULER_FILES_MAX_ENTRIES", 10_000)
# Inbound e-mail (receive_email)
# Each email-triggered task's address is <random>@SCHEDULER_INBOUND_EMAIL_DOMAIN; the SMTP
# receiver listens on BIND:PORT and refuses larger messages and more recipients (552/452).
SCHEDULER_INBOUND_EMAIL_DOMAIN = os.environ.get("SCHEDULER_INBOUND_EMAIL_DOMAIN", "localhost")
SCHEDULER_SMTP_BIND = os.environ.get("SCHEDULER_SMTP_BIND", "127.0.0.1")
SCHEDULER_SMTP_PORT = env_int("SCHEDULER_SMTP_PORT", 2525)
SCHEDULER_INBOUND_EMAIL_MAX_BYTES = env_int("SCHEDULER_INBOUND_EMAIL_MAX_BYTES", 10 * 1024 * 1024)
SCHEDULER_INBOUND_EMAIL_MAX_RECIPIENTS = env_int("SCHEDULER_INBOUND_EMAIL_MAX_RECIPIENTS", 20)

# --- Celery ------------------------------------------------------------------------
# localfs:// is kombu's filesystem transport with atomic writes (scheduler_project.transport).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "localfs://"
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", "django-db")
CELERY_RESULT_EXTENDED = True
# The runs of scheduled tasks are recorded in their execution history; a Celery result row
# per run (django-celery-results' "Task results") repeats it and costs a write per run.
# True stores those rows as well.
SCHEDULER_CELERY_RESULTS = env_bool("SCHEDULER_CELERY_RESULTS", False)
# The worker's own statements (tasks_app.rows) are prepared once per PostgreSQL connection.
# False behind a pooler that cannot keep prepared statements (PgBouncer before 1.21 in
# transaction mode).
SCHEDULER_PREPARED_STATEMENTS = env_bool("SCHEDULER_PREPARED_STATEMENTS", True)
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# At-least-once delivery; our execution ledger turns it into exactly-once effect.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fix-up closes every database connection before and after every task
# unless this is set (it then closes them every this many tasks); tasks_app.tasks closes
# them as Django does between requests instead (CONN_MAX_AGE, CONN_HEALTH_CHECKS).
CELERY_DB_REUSE_MAX = 1_000_000
CELERY_TASK_TIME_LIMIT = SCHEDULER_TASK_TIME_LIMIT
CELERY_TASK_SOFT_TIME_LIMIT = max(
    SCHEDULER_TASK_TIME_LIMIT - 30, SCHEDULER_TASK_TIME_LIMIT * 9 // 10
)
# No "STARTED" result row per task (one database write less per run): the execution
# ledger has started_at, and Flower learns of the start from the task-started event.
CELERY_TASK_TRACK_STARTED = False
CELERY_TASK_SEND_SENT_EVENT = True
# Task events cost the worker about a third of its throughput; a worker sends them while
# a monitor asks for them: Flower turns them on in every worker every 5 s.
CELERY_WORKER_SEND_TASK_EVENTS = env_bool("CELERY_WORKER_SEND_TASK_EVENTS", False)
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "tasks_app.beat:Scheduler"
# Beat sends these by name (it does not import the task modules): each message says that
# its task keeps no result, as the task does.
CELERY_BEAT_SCHEDULE = {
    "scheduler.recover-executions": {
        "task": "tasks_app.recover_executions",
        "schedule": float(SCHEDULER_RECOVERY_INTERVAL),
        "options": {"expires": float(SCHEDULER_RECOVERY_INTERVAL), "ignore_result": True},
    },
    "scheduler.cleanup-executions": {
        "task": "tasks_app.cleanup_executions",
        "schedule": crontab(minute="17", hour="3"),
        "options": {"expires": 3600.0, "ignore_result": True},
    },
    "scheduler.check-late-tasks": {
        "task": "tasks_app.check_late_tasks",
        "schedule": float(SCHEDULER_LATE_CHECK_INTERVAL),
        "options": {"expires": float(SCHEDULER_LATE_CHECK_INTERVAL), "ignore_result": True},
    },
}
if CELERY_BROKER_URL.startswith(("localfs://", "filesystem://")):
    _broker_dir = DATA_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        # Virtual transports sleep this long whenever a worker cannot take another message
        # (prefetch 1), which caps throughput near concurrency / interval.
        "polling_interval": float(os.environ.get("SCHEDULER_EMBEDDED_POLL_INTERVAL", 0.05)),
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600),
    }

# Shared by every process (throttling counts must be): Redis in production, files when
# embedded.
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ.get("CACHE_URL", CELERY_BROKER_URL),
            "KEY_PREFIX": "scheduler",
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "cache"),
        }
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact_secrets": {"()": "scheduler_project.logfilters.RedactSecrets"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "django.server": {
            "()": "django.utils.log.ServerFormatter",
            "format": "[{server_time}] {message}",
            "style": "{",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact_secrets"],
        },
        "django.server": {
            "class": "logging.StreamHandler",
            "formatter": "django.server",
            "filters": ["redact_secrets"],
        },
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # runserver's access log: the request line holds the query string
        "django.server": {"handlers": ["django.server"], "level": "INFO", "propagate": False},
    },
}

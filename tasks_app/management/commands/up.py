"""`python manage.py up`: migrate, make an admin login, then run web, worker, beat,
Flower and the inbound mail receiver together under honcho (Procfile); Ctrl-C stops them
all."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from tasks_app.auth import token_issue, token_matches


class Command(BaseCommand):
    help = "Prepare the database and start web, worker, beat, Flower and mail together."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("WEB_PORT", 8000)))
        parser.add_argument(
            "--flower-port", type=int, default=int(os.environ.get("FLOWER_PORT", 5555))
        )
        parser.add_argument("--host", default=os.environ.get("WEB_HOST", "127.0.0.1"))
        parser.add_argument(
            "--prepare-only",
            action="store_true",
            help="migrate and create the admin login, then exit",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        username, password, token = self._admin_login()
        host, port, flower = options["host"], options["port"], options["flower_port"]
        self.stdout.write(self.style.SUCCESS("Scheduler is starting:"))
        self.stdout.write(
            f"  API     http://{host}:{port}/api/  (health /api/health, docs /api/docs/)"
        )
        self.stdout.write(f"  Admin   http://{host}:{port}/admin/  login: {username} / {password}")
        self.stdout.write(f"  Token   Authorization: Token {token}")
        self.stdout.write(f"  Flower  http://{host}:{flower}/")
        self.stdout.write(
            f"  Mail    smtp://{settings.SCHEDULER_SMTP_BIND}:{settings.SCHEDULER_SMTP_PORT} "
            f"(email-triggered tasks, @{settings.SCHEDULER_INBOUND_EMAIL_DOMAIN})"
        )
        self.stdout.write(f"  Data    {settings.DATA_DIR}")
        self.stdout.write("Stop everything with Ctrl-C.")
        if options["prepare_only"]:
            return
        bin_dir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "WEB_HOST": host,
            "WEB_PORT": str(port),
            "FLOWER_PORT": str(flower),
            "SCHEDULER_DATA_DIR": str(settings.DATA_DIR),
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONUNBUFFERED": "1",
        }
        procfile = Path(settings.BASE_DIR) / "Procfile"
        os.chdir(settings.BASE_DIR)
        os.execve(
            sys.executable, [sys.executable, "-m", "honcho", "-f", str(procfile), "start"], env
        )

    def _admin_login(self) -> tuple[str, str, str]:
        """The first admin's login, made on first start and kept under the data dir."""
        users = get_user_model()
        secret_file = Path(settings.DATA_DIR) / "admin_password"
        username = os.environ.get("SCHEDULER_ADMIN_USER", "admin")
        user = users.objects.filter(username=username).first()
        if user is None:
            password = os.environ.get("SCHEDULER_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
            user = users.objects.create_superuser(username=username, email="", password=password)
            secret_file.write_text(password)
            secret_file.chmod(0o600)
        password = secret_file.read_text().strip() if secret_file.exists() else "(unchanged)"
        # Keys are stored hashed: the first start makes one and keeps it beside the
        # password (0600); a key that no longer works (replaced) is made anew.
        token_file = Path(settings.DATA_DIR) / "admin_token"
        token = token_file.read_text().strip() if token_file.exists() else ""
        if not token or not token_matches(user, token):
            token = token_issue(user)
            token_file.write_text(token)
            token_file.chmod(0o600)
        return username, password, token

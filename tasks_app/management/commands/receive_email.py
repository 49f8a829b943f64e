"""`python manage.py receive_email`: the SMTP receiver of the email trigger.

Listens on SCHEDULER_SMTP_BIND:SCHEDULER_SMTP_PORT (or --bind/--port) for mail to the
tasks' addresses (``<local part>@SCHEDULER_INBOUND_EMAIL_DOMAIN``); see
tasks_app.services.inbound_email. SIGTERM or SIGINT stops taking connections, lets
deliveries under way finish (up to --grace seconds) and exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from tasks_app.services.inbound_email import (
    InboundHandler,
    build_controller,
    controller_shutdown,
    inbound_domain,
)


class Command(BaseCommand):
    help = "Receive e-mail for email-triggered tasks (an SMTP server; Ctrl-C stops it)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--bind", default=settings.SCHEDULER_SMTP_BIND)
        parser.add_argument("--port", type=int, default=settings.SCHEDULER_SMTP_PORT)
        parser.add_argument(
            "--grace",
            type=float,
            default=20.0,
            help="seconds to let deliveries under way finish on shutdown",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # aiosmtpd logs every connection at INFO; our own logger logs one line a message.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
        handler = InboundHandler()
        controller = build_controller(
            hostname=options["bind"], port=options["port"], handler=handler
        )
        controller.start()
        limit = settings.SCHEDULER_INBOUND_EMAIL_MAX_BYTES
        self.stdout.write(
            f"Receiving mail for *@{inbound_domain()} on {options['bind']}:{options['port']} "
            f"(messages up to {limit} bytes)"
        )
        self.stdout.flush()
        while not stop.wait(1.0):
            pass
        self.stdout.write("Stopping: finishing deliveries under way")
        controller_shutdown(controller, handler, grace=options["grace"])
        self.stdout.write("Stopped")

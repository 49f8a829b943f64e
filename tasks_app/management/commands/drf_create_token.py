"""`python manage.py drf_create_token <username> [-r]`: DRF's command, for tokens stored
hashed (tasks_app.auth): the key is printed once, when it is made, and cannot be shown
again; `-r` replaces a user's key."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token

from tasks_app.auth import token_issue


class Command(BaseCommand):
    help = "Create a DRF token for a user (shown once; stored hashed)"

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username", type=str)
        parser.add_argument(
            "-r",
            "--reset",
            action="store_true",
            dest="reset_token",
            default=False,
            help="Replace the user's existing token with a new one",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["username"]
        users = get_user_model()
        try:
            user = users._default_manager.get_by_natural_key(username)
        except users.DoesNotExist:
            raise CommandError(f"Cannot create the Token: user {username} does not exist") from None
        if Token.objects.filter(user=user).exists() and not options["reset_token"]:
            raise CommandError(
                f"user {username} already has a token; tokens are stored hashed and cannot "
                "be shown again: use -r to replace it"
            )
        self.stdout.write(f"Generated token {token_issue(user)} for user {username}")

"""A Django view that saves a note and notifies the note's board through the transactional
outbox, in one database transaction: the WebSocket clients hear of the note only if it was
saved, and once.

    export DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test
    python examples/django_outbox/app.py migrate_notes   # the notes and outbox tables
    python examples/django_outbox/app.py runserver 8000
    smartsocket serve --outbox-url $DATABASE_URL         # publishes the outbox's rows
    curl -X POST localhost:8000/boards/team/notes -d '{"text": "hello"}'

Clients in room ``board:team`` get ``note.added`` with the note. A note over 200 characters
fails the table's CHECK: the transaction rolls back, its outbox row with it, and nobody hears of
a note that was never saved. One file for the example's sake; in a real project the view, the
model (``Note.objects.create``) and the migration live in their usual places.
"""

from __future__ import annotations

import json
import os
import sys
from urllib.parse import urlsplit

import django
from django.conf import settings

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def database(url: str) -> dict[str, object]:
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql", "NAME": parts.path.lstrip("/"),
        "USER": parts.username or "", "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "", "PORT": parts.port or "",
    }


settings.configure(
    DEBUG=False, SECRET_KEY="example-only", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
    DATABASES={"default": database(DATABASE_URL)}, USE_TZ=True,
)
django.setup()

from django.db import DatabaseError, connection, transaction  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from django.views.decorators.http import require_POST  # noqa: E402

from smartsocket.outbox import schema_sql  # noqa: E402
from smartsocket.outbox.django import insert_outbox_row  # noqa: E402

NOTES_SQL = """
CREATE TABLE IF NOT EXISTS example_notes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    board text NOT NULL,
    text text NOT NULL CHECK (length(text) <= 200)
)
"""


@csrf_exempt
@require_POST
def add_note(request: HttpRequest, board: str) -> JsonResponse:
    text = str(json.loads(request.body or b"{}").get("text", ""))
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO example_notes (board, text) VALUES (%s, %s) RETURNING id",
                    [board, text],
                )
                note_id = cursor.fetchone()[0]
            # Last in the transaction: the row holds its room's order lock until the commit.
            insert_outbox_row(f"board:{board}", "note.added", {"id": note_id, "text": text})
    except DatabaseError as exc:  # the CHECK refused it: nothing saved, nothing published
        return JsonResponse({"error": str(exc).splitlines()[0]}, status=400)
    return JsonResponse({"id": note_id}, status=201)


urlpatterns = [path("boards/<str:board>/notes", add_note)]


def migrate_notes() -> None:
    with connection.cursor() as cursor:
        cursor.execute(NOTES_SQL)
        cursor.execute(schema_sql())


if __name__ == "__main__":
    if sys.argv[1:] == ["migrate_notes"]:
        migrate_notes()
    else:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)

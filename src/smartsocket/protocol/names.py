"""The one naming rule for events and rooms, used by the server, the Python client and the
cluster alike (the README's "printable names").

A name is a non-empty string of *printable* characters, as ``str.isprintable`` defines them:
letters, marks, numbers, punctuation, symbols and the ASCII space. Refused: control characters
(Cc: C0, DEL, C1 such as U+0085), format characters (Cf: bidi controls such as U+202E, zero-width
characters such as U+200B, BOM), line and paragraph separators (U+2028, U+2029), other spaces
(U+00A0, U+3000...), surrogates (Cs), private-use (Co) and unassigned (Cn) code points. Such
characters make two names that look the same differ, reorder what a log or a UI shows, or break
lines in logs. ``isprintable`` runs in C: one call per inbound event.
"""

from __future__ import annotations


def name_problem(kind: str, name: object, max_length: int | None = None) -> str | None:
    """Why ``name`` is not a valid ``kind`` ("event", "room") name, or None when it is."""
    if type(name) is not str or not name:
        return f"{kind} name must be a non-empty string"
    if max_length is not None and len(name) > max_length:
        return f"{kind} name longer than {max_length} characters"
    if not name.isprintable():
        return f"{kind} name has control, format or separator characters"
    return None


def check_event(event: object) -> None:
    """Raise ValueError unless ``event`` may be sent by an application (the server's
    ``send``/``broadcast``, the client's ``emit``/``call``): a valid name not starting with
    ``$`` (reserved for the protocol)."""
    problem = name_problem("event", event)
    if problem is not None:
        raise ValueError(f"{problem}: {event!r}")
    assert isinstance(event, str)
    if event[0] == "$":
        raise ValueError(f"event names starting with '$' are reserved: {event!r}")


def check_user(user: object) -> str:
    """``user`` as a user id: a non-empty str, or an int (not a bool) made a str."""
    if type(user) is int:
        return str(user)
    if not isinstance(user, str):
        raise TypeError(f"a user id is a str or an int, not {type(user).__name__}")
    if not user:
        raise ValueError("a user id cannot be empty")
    return user

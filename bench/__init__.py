"""SmartSocket benchmark harness.

Run from the repository root with the project's virtualenv::

    .venv/bin/python -m bench run ack,fanout --peers python-socketio,picows-raw --quick

Importing this package has no side effects: nothing is built, installed or
started until a command asks for it.  See bench/RESULTS.md for the column
meanings and ``python -m bench --help`` for the commands.
"""

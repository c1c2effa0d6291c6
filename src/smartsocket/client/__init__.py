"""The Python client."""

from smartsocket.client.client import Client, connect

__all__ = ["Client", "connect"]

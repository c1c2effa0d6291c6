"""The server side: ``SmartSocket``, ``Socket`` and ``Room``."""

from smartsocket.server.app import SmartSocket
from smartsocket.server.rooms import Room
from smartsocket.server.socket import Socket

__all__ = ["Room", "SmartSocket", "Socket"]

"""Socket.IO clients on the server (issue 17): the endpoint, each client's session, and the
``Socket`` a Socket.IO client is to the application. The codecs are sans-I/O, in
``smartsocket.protocol.socketio``."""

from smartsocket.server.socketio.endpoint import SocketIOEndpoint
from smartsocket.server.socketio.namespace import Namespace
from smartsocket.server.socketio.socket import SocketIOSocket

__all__ = ["Namespace", "SocketIOEndpoint", "SocketIOSocket"]

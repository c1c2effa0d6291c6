// socketio-node peer: Node Socket.IO 4.x, websocket transport only.
//
// Same demo app as every other peer:
//   echo (any data)              -> ack with the same data
//   join {room}                  -> join the room, ack {room, members}
//   chat {room, text}            -> "chat" {room, text, from, timestamp} to every
//                                   OTHER member of the room, ack {delivered: n}
//
// Socket.IO defaults are kept (no perMessageDeflate, default ping interval,
// ws as the websocket engine without optional native add-ons).
// --per-message-deflate THRESHOLD switches permessage-deflate on, as
// `perMessageDeflate: { threshold: THRESHOLD }` (engine.io passes it to ws; ws
// keeps its defaults otherwise: context takeover, zlib's default level (6),
// one compressor per connection, compression on the libuv thread pool).
//
// Usage: node server.js --port P [--host 127.0.0.1] [--max-lifetime S]
//                       [--per-message-deflate THRESHOLD]
"use strict";

const http = require("http");
const { Server } = require("socket.io");

function arg(name, def) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

const host = arg("--host", "127.0.0.1");
const port = parseInt(arg("--port", "0"), 10);
const maxLifetime = parseFloat(arg("--max-lifetime", "3600"));
const deflateArg = arg("--per-message-deflate", null);
if (!port) {
  console.error("usage: node server.js --port P [--host 127.0.0.1]");
  process.exit(2);
}

const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: deflateArg === null ? false : { threshold: parseInt(deflateArg, 10) },
});

function roomSize(room) {
  const set = io.of("/").adapter.rooms.get(room);
  return set ? set.size : 0;
}

io.on("connection", (socket) => {
  socket.on("echo", (data, ack) => {
    if (typeof ack === "function") ack(data);
  });

  socket.on("join", (data, ack) => {
    const room = data && typeof data.room === "string" ? data.room : null;
    if (room === null) {
      if (typeof ack === "function") ack({ error: "join needs {room: str}" });
      return;
    }
    socket.join(room);
    if (typeof ack === "function") ack({ room, members: roomSize(room) });
  });

  socket.on("chat", (data, ack) => {
    if (!data || typeof data.room !== "string" || typeof data.text !== "string") {
      if (typeof ack === "function") ack({ error: "chat needs {room, text}" });
      return;
    }
    const room = data.room;
    socket.to(room).emit("chat", { room, text: data.text, from: socket.id, timestamp: Date.now() });
    const members = io.of("/").adapter.rooms.get(room);
    const delivered = members ? members.size - (members.has(socket.id) ? 1 : 0) : 0;
    if (typeof ack === "function") ack({ delivered });
  });
});

httpServer.listen(port, host, () => {
  console.log(`socketio-node listening on ${host}:${port}`);
});

// safety net: the bench tool kills us long before this
setTimeout(() => process.exit(0), maxLifetime * 1000).unref();

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => process.exit(0));
}

// Compiled (not run) by tests/js/types.test.mjs: smartsocket.d.ts must accept the documented API
// and refuse misuse (each @ts-expect-error line must be an error).
import SmartSocket, { SmartSocketError, decode, encode, msgpack, needsBinary } from "smartsocket-client";
import type { ConnectInfo, DisconnectInfo, GapInfo, SmartSocketOptions, WelcomeInfo } from "smartsocket-client";

const options: SmartSocketOptions = {
  reconnectDelay: 500,
  reconnectDelayMax: 5000,
  randomizationFactor: 0.3,
  maxReconnectAttempts: null,
  ackTimeout: 1000,
  maxBuffered: 10,
  auth: () => Promise.resolve({ token: "t" }),
};
const socket = new SmartSocket("ws://127.0.0.1:8080/", options);
const byPage = new SmartSocket();
const withOptionsOnly = new SmartSocket({ reconnect: false });

async function main(): Promise<void> {
  const same: SmartSocket = await socket.connect();
  const welcome: WelcomeInfo | null = same.welcome;
  const sid: string | null = socket.id;
  const up: boolean = socket.connected;
  const reply = await socket.call<{ room: string; members: number }>("join", { room: "lobby" });
  const members: number = reply.members;
  await socket.call("echo", new Uint8Array(3), { timeout: 500, binary: true });
  socket.send("chat", { room: "lobby", text: "hi" }).emit("chat", { room: "lobby", text: "again" });
  socket.on("chat", (data) => console.log(data.text));
  socket.on("question", async (data) => ({ answer: data }));
  socket.on("disconnect", (info: DisconnectInfo) => console.log(info.code, info.reason));
  socket.on("reconnecting", (attempt) => attempt.toFixed());
  socket.once("connect", () => undefined).off("chat");
  socket.on("connect", (info: ConnectInfo) => console.log(info.recovered));
  socket.on("connect", ({ recovered }) => recovered && console.log("resumed"));
  socket.on("$gap", (info: GapInfo) => console.log("refetch", info.room.toUpperCase()));
  const resumed: boolean = socket.recovered;
  const window: number | undefined = welcome?.recovery;
  const dynamic: string = "news";
  socket.on(dynamic, (data) => data);
  const rtt: number = await socket.ping(1000);
  try {
    await socket.call("chat", { room: "nowhere", text: "x" });
  } catch (err) {
    if (err instanceof SmartSocketError) console.log(err.code, err.retryAfter, err.closeCode);
  }
  const bytes: Uint8Array = encode({ a: 1 });
  const back: unknown = decode(bytes);
  const viaStatic = SmartSocket.msgpack.decode(msgpack.encode(1));
  const binary: boolean = needsBinary(bytes);
  await socket.close();
  console.log(welcome, sid, up, members, rtt, back, viaStatic, binary, byPage, withOptionsOnly, resumed, window);

  // @ts-expect-error: the event name must be a string
  socket.send(42, "x");
  // @ts-expect-error: connect handlers get {recovered}
  socket.on("connect", (info: string) => info);
  // @ts-expect-error: recovered is read-only
  socket.recovered = true;
  // @ts-expect-error: $gap handlers get {room}
  socket.on("$gap", (info: number) => info);
  // @ts-expect-error: reconnecting handlers get a number
  socket.on("reconnecting", (attempt: string) => attempt);
  // @ts-expect-error: no such option type
  new SmartSocket("ws://x/", { maxBuffered: "many" });
  // @ts-expect-error: call options are an object
  socket.call("echo", 1, 500);
}
void main;

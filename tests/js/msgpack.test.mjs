// Unit tests of the client's MessagePack codec, plus a cross-check against msgspec (the codec of
// the Python server) byte for byte.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, it } from "node:test";
import { decode, encode, needsBinary } from "../../js/src/smartsocket.js";
import { ROOT } from "./helpers.mjs";

const hex = (bytes) => Buffer.from(bytes).toString("hex");
const fromHex = (text) => new Uint8Array(Buffer.from(text.replace(/\s+/g, ""), "hex"));
const roundTrip = (value) => decode(encode(value));

describe("MessagePack encode", () => {
  it("uses the smallest integer forms", () => {
    const cases = [
      [0, "00"], [127, "7f"], [128, "cc80"], [255, "ccff"], [256, "cd0100"], [65535, "cdffff"],
      [65536, "ce00010000"], [4294967295, "ceffffffff"], [4294967296, "cf0000000100000000"],
      [Number.MAX_SAFE_INTEGER, "cf001fffffffffffff"],
      [-1, "ff"], [-32, "e0"], [-33, "d0df"], [-128, "d080"], [-129, "d1ff7f"],
      [-32768, "d18000"], [-32769, "d2ffff7fff"], [-2147483648, "d280000000"],
      [-2147483649, "d3ffffffff7fffffff"], [-Number.MAX_SAFE_INTEGER, "d3ffe0000000000001"],
    ];
    for (const [value, expected] of cases) {
      assert.equal(hex(encode(value)), expected, `encode(${value})`);
      assert.equal(decode(fromHex(expected)), value, `decode(${expected})`);
    }
  });

  it("encodes floats as float64 and big integers as 64-bit", () => {
    assert.equal(hex(encode(1.5)), "cb3ff8000000000000");
    assert.equal(hex(encode(2 ** 53)), "cb4340000000000000"); // beyond the safe range: a float
    for (const value of [1.5, -0.25, 1e300, -1e-300, Infinity, -Infinity]) assert.equal(roundTrip(value), value);
    assert.ok(Number.isNaN(roundTrip(NaN)));
    assert.equal(hex(encode(2n ** 63n)), "cf8000000000000000");
    assert.equal(hex(encode(-(2n ** 63n))), "d38000000000000000");
    assert.equal(roundTrip(2n ** 64n - 1n), 2n ** 64n - 1n); // out of the safe range: a bigint
    assert.equal(roundTrip(-(2n ** 62n)), -(2n ** 62n));
    assert.equal(roundTrip(5n), 5); // in the safe range: a number
  });

  it("encodes nil, booleans and strings of every length class", () => {
    assert.equal(hex(encode(null)), "c0");
    assert.equal(hex(encode(undefined)), "c0");
    assert.equal(hex(encode(true)), "c3");
    assert.equal(hex(encode(false)), "c2");
    assert.equal(hex(encode("")), "a0");
    assert.equal(hex(encode("a")), "a161");
    for (const [length, prefix] of [[31, "bf"], [32, "d920"], [255, "d9ff"], [256, "da0100"], [65535, "daffff"], [65536, "db00010000"]]) {
      const text = "x".repeat(length);
      assert.ok(hex(encode(text)).startsWith(prefix), `string of ${length}`);
      assert.equal(roundTrip(text), text);
    }
    const unicode = "héllo ✓ 𝄞 — 日本語";
    assert.equal(roundTrip(unicode), unicode);
    assert.equal(hex(encode("é")), "a2c3a9"); // length in UTF-8 bytes
  });

  it("encodes bytes as bin and decodes bin as Uint8Array", () => {
    assert.equal(hex(encode(new Uint8Array([1, 2, 3]))), "c403010203");
    assert.equal(hex(encode(new Uint8Array([1, 2, 3]).buffer)), "c403010203");
    assert.equal(hex(encode(new DataView(new Uint8Array([9, 1, 2, 9]).buffer, 1, 2))), "c4020102");
    assert.equal(hex(encode(new Uint16Array([0x0102]))), "c4020201"); // raw memory bytes
    assert.equal(hex(encode(Buffer.from("hi"))), "c4026869"); // a Node Buffer is bytes, not toJSON
    for (const [length, prefix] of [[0, "c400"], [255, "c4ff"], [256, "c50100"], [65536, "c600010000"]]) {
      const bytes = new Uint8Array(length).map((_, i) => i * 7);
      assert.ok(hex(encode(bytes)).startsWith(prefix), `bin of ${length}`);
      const back = roundTrip(bytes);
      assert.ok(back instanceof Uint8Array);
      assert.deepEqual(back, bytes);
    }
  });

  it("encodes arrays and maps of every length class", () => {
    assert.equal(hex(encode([])), "90");
    assert.equal(hex(encode([1, [2]])), "920191" + "02");
    assert.equal(hex(encode({})), "80");
    // the spec's example
    assert.equal(hex(encode({ compact: true, schema: 0 })), "82a7636f6d70616374c3a6736368656d6100");
    for (const [length, prefix] of [[15, "9f"], [16, "dc0010"], [65535, "dcffff"], [65536, "dd00010000"]]) {
      const list = Array.from({ length }, (_, i) => i % 200);
      assert.ok(hex(encode(list)).startsWith(prefix), `array of ${length}`);
      assert.deepEqual(roundTrip(list), list);
    }
    for (const [length, prefix] of [[15, "8f"], [16, "de0010"], [65536, "df00010000"]]) {
      const map = Object.fromEntries(Array.from({ length }, (_, i) => [`k${i}`, i]));
      assert.ok(hex(encode(map)).startsWith(prefix), `map of ${length}`);
      assert.deepEqual(roundTrip(map), map);
    }
  });

  it("follows JSON.stringify for undefined, functions and toJSON", () => {
    assert.deepEqual(roundTrip({ a: 1, b: undefined, c: () => 1 }), { a: 1 });
    assert.deepEqual(roundTrip([undefined, () => 1]), [null, null]);
    const when = new Date(Date.UTC(2025, 0, 2, 3, 4, 5));
    assert.equal(roundTrip(when), when.toJSON());
    assert.deepEqual(roundTrip({ nested: { deep: [1, "two", { three: 3.5 }] } }), { nested: { deep: [1, "two", { three: 3.5 }] } });
  });
});

describe("MessagePack decode", () => {
  it("reads float32, fixext and ext, and timestamps as Dates", () => {
    assert.equal(decode(fromHex("ca3fc00000")), 1.5);
    assert.equal(decode(fromHex("d6ff00000001")).getTime(), 1000); // timestamp 32
    const ts64 = decode(fromHex("d7ff" + "00000004" + "00000001")); // 1 ns, 1 s
    assert.equal(ts64.getTime(), 1000);
    const ts96 = decode(fromHex("c70cff" + "000f4240" + "ffffffffffffffff")); // 1 ms before the epoch + 1 ms
    assert.equal(ts96.getTime(), -999);
    assert.deepEqual(decode(fromHex("d40501")), { type: 5, data: new Uint8Array([1]) });
    assert.deepEqual(decode(fromHex("c70203aabb")), { type: 3, data: new Uint8Array([0xaa, 0xbb]) });
  });

  it("accepts ArrayBuffer, Uint8Array and offset views", () => {
    const bytes = encode({ a: [1, 2] });
    assert.deepEqual(decode(bytes.buffer.slice(0, bytes.length)), { a: [1, 2] });
    const padded = new Uint8Array(bytes.length + 4);
    padded.set(bytes, 2);
    assert.deepEqual(decode(padded.subarray(2, 2 + bytes.length)), { a: [1, 2] });
    assert.deepEqual(decode(Buffer.from(bytes)), { a: [1, 2] });
  });

  it("turns non-string map keys into strings and keeps __proto__ a plain key", () => {
    assert.deepEqual(decode(fromHex("820102c3a178")), { 1: 2, true: "x" });
    const evil = decode(encode(JSON.parse('{"__proto__": {"polluted": true}}')));
    assert.equal({}.polluted, undefined);
    assert.equal(Object.getPrototypeOf(evil), Object.prototype);
    assert.deepEqual(Object.keys(evil), ["__proto__"]);
  });

  it("refuses truncated, invalid and trailing input", () => {
    assert.throws(() => decode(fromHex("")), RangeError);
    assert.throws(() => decode(fromHex("cd01")), /truncated/);
    assert.throws(() => decode(fromHex("a5616263")), /truncated/);
    assert.throws(() => decode(fromHex("c1")), /invalid MessagePack byte 0xc1/);
    assert.throws(() => decode(fromHex("0102")), /bytes left/);
    assert.throws(() => decode(fromHex("ddffffffff")), /truncated/); // absurd length, no allocation
  });

  it("decides binary frames like the server: bytes at the top level or one level down", () => {
    assert.equal(needsBinary(new Uint8Array(1)), true);
    assert.equal(needsBinary(new ArrayBuffer(1)), true);
    assert.equal(needsBinary({ file: new Uint8Array(1) }), true);
    assert.equal(needsBinary([1, new Uint8Array(1)]), true);
    assert.equal(needsBinary({ deep: { file: new Uint8Array(1) } }), false);
    assert.equal(needsBinary({ text: "hi" }), false);
    assert.equal(needsBinary(null), false);
    assert.equal(needsBinary("bytes"), false);
  });
});

describe("MessagePack against msgspec (the server's codec)", () => {
  it("encodes exactly as msgspec does, and each decodes the other", () => {
    const values = [
      0, 1, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, Number.MAX_SAFE_INTEGER,
      -1, -32, -33, -128, -129, -32768, -32769, -(2 ** 31), -(2 ** 31) - 1, -Number.MAX_SAFE_INTEGER,
      1.5, -2.25, 1e100, null, true, false, "", "x".repeat(40), "x".repeat(300), "héllo ✓ 𝄞",
      new Uint8Array([0, 1, 255]), new Uint8Array(300).fill(7),
      [], [1, "a", null], Array.from({ length: 20 }, (_, i) => i),
      {}, { room: "lobby", text: "hi", n: 3 }, Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`k${i}`, i])),
      ["chat", { room: "r", file: new Uint8Array([1, 2]) }, 7],
    ];
    const input = values.map((v) => Buffer.from(encode(v)).toString("base64")).join("\n");
    const script = [
      "import base64, sys, msgspec",
      "for line in sys.stdin.read().split():",
      "    value = msgspec.msgpack.decode(base64.b64decode(line))",
      "    print(base64.b64encode(msgspec.msgpack.encode(value)).decode())",
    ].join("\n");
    const python = join(ROOT, ".venv", "bin", "python");
    const result = spawnSync(python, ["-c", script], { input, encoding: "utf8", timeout: 15000 });
    assert.equal(result.status, 0, result.stderr);
    const lines = result.stdout.trim().split("\n");
    assert.equal(lines.length, values.length);
    values.forEach((value, i) => {
      const ours = Buffer.from(encode(value)).toString("base64");
      assert.equal(lines[i], ours, `msgspec re-encodes ${JSON.stringify(value)} identically`);
      assert.deepEqual(decode(Buffer.from(lines[i], "base64")), value);
    });
  });
});

/*
 * cref.c - a minimal C epoll WebSocket server for the SmartSocket benchmarks:
 * "this machine's limit" in every results table.  127.0.0.1 only.
 *
 * It speaks just enough of the SmartSocket v1 wire format for the bench
 * workloads (docs/protocol.md has the real thing):
 *
 *   on connect                      -> ["$welcome", {"sid": "c<N>", "pingInterval": 25000}]
 *   ["echo", data, id]              -> [id, data]
 *   ["join", {"room": r}, id]       -> [id, {"room": r, "members": n}]
 *   ["chat", {"room": r, "text": t}, id]
 *        every other member of r    <- ["chat", {"room", "text", "from", "timestamp"}]
 *        sender                     <- [id, {"delivered": n}]
 *   ["$pong", ...]                  -> ignored
 *   anything else with an id        -> [id, null, {"code": "unknown_event", ...}]
 *
 * It parses only what it needs (the event name, the trailing id, the "room"
 * and "text" strings, kept escaped as received) and validates little: no
 * UTF-8 check, no limits beyond a 1 MiB message, no heartbeat.  What makes it
 * fast is the write path: frames for one connection are appended to that
 * connection's buffer and written with ONE send() per connection per loop
 * iteration (the design's "coalesce per connection per iteration"), and a
 * broadcast is framed (and, with permessage-deflate, compressed) once.
 *
 * permessage-deflate: when offered, it is accepted with
 * server_no_context_takeover, so one compressed broadcast fits every
 * receiver; messages of at least 256 bytes are compressed (zlib level 1) when
 * that saves at least 10%.  Compressed messages from clients are not
 * supported (the bench generator never sends any): they close with 1003.
 *
 * Idle connections hold no buffers: reads go to one shared scratch buffer
 * and only a partial frame is kept per connection; a write buffer exists only
 * while data is queued.
 *
 * Build: cc -O2 -o cref cref.c -lz
 * Usage: cref --port P [--host 127.0.0.1] [--no-deflate] [--max-lifetime S]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define MAX_MSG (1u << 20)
#define SCRATCH (4u << 20)
#define MAX_WBUF (64u << 20) /* a client this far behind is dropped */
#define MAX_ROOMS_PER_CONN 8
#define ROOM_BUCKETS 65536
#define COMPRESS_MIN 256

/* ------------------------------------------------------------------ */
/* SHA-1 + base64 for Sec-WebSocket-Accept                              */

#define ROL32(x, n) (((x) << (n)) | ((x) >> (32 - (n))))
static void sha1_block(uint32_t h[5], const uint8_t *p) {
    uint32_t w[80], a, b, c, d, e, f, k, t;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++) w[i] = ROL32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4];
    for (int i = 0; i < 80; i++) {
        if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
        else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
        else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
        else { f = b ^ c ^ d; k = 0xCA62C1D6; }
        t = ROL32(a, 5) + f + e + k + w[i];
        e = d; d = c; c = ROL32(b, 30); b = a; a = t;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
}

static void sha1(const uint8_t *data, size_t len, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t i = 0;
    for (; i + 64 <= len; i += 64) sha1_block(h, data + i);
    uint8_t tail[128] = {0};
    size_t r = len - i;
    memcpy(tail, data + i, r);
    tail[r] = 0x80;
    size_t tl = (r + 9 <= 64) ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int j = 0; j < 8; j++) tail[tl - 1 - j] = (uint8_t)(bits >> (8 * j));
    sha1_block(h, tail);
    if (tl == 128) sha1_block(h, tail + 64);
    for (int j = 0; j < 5; j++)
        for (int b = 0; b < 4; b++) out[4 * j + b] = (uint8_t)(h[j] >> (24 - 8 * b));
}

static void base64(const uint8_t *in, size_t n, char *out) {
    static const char T[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = T[v >> 18]; out[o++] = T[(v >> 12) & 63]; out[o++] = T[(v >> 6) & 63]; out[o++] = T[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = T[v >> 18]; out[o++] = T[(v >> 12) & 63]; out[o++] = '='; out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = T[v >> 18]; out[o++] = T[(v >> 12) & 63]; out[o++] = T[(v >> 6) & 63]; out[o++] = '=';
    }
    out[o] = 0;
}

/* ------------------------------------------------------------------ */
/* connections and rooms                                                */

struct room;
struct conn {
    int fd;
    uint32_t id;
    uint8_t ws, pmd, dirty, epollout, closing, dead;
    uint8_t *rbuf; uint32_t rlen;          /* leftover partial data only */
    uint8_t *wbuf; uint32_t wlen, woff, wcap;
    uint8_t *frag; uint32_t flen; uint8_t fop, in_frag;
    struct room *rooms[MAX_ROOMS_PER_CONN];
    uint8_t nrooms;
};

struct room {
    struct room *next;
    struct conn **m;
    uint32_t n, cap;
    uint32_t nlen;
    char name[];
};

static int epfd;
static uint32_t next_id = 1;
static struct room *buckets[ROOM_BUCKETS];
static struct conn **dirty; static size_t n_dirty, dirty_cap;
static struct conn **dead; static size_t n_dead, dead_cap;
static uint8_t *scratch;
static uint8_t *msgbuf; static size_t msgcap;   /* one outgoing payload */
static uint8_t *zbuf; static size_t zcap;       /* one compressed payload */
static z_stream zdef;
static int deflate_enabled = 1;

static void die_oom(void) { fputs("cref: out of memory\n", stderr); exit(3); }

static void grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) nc *= 2;
    void *np = realloc(*p, nc * elem);
    if (!np) die_oom();
    *p = np; *cap = nc;
}

static void set_out(struct conn *c, int on) {
    if (c->epollout == on) return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->epollout = (uint8_t)on;
}

static void kill_conn(struct conn *c) {
    if (c->dead) return;
    c->dead = 1;
    for (int i = 0; i < c->nrooms; i++) {
        struct room *r = c->rooms[i];
        for (uint32_t j = 0; j < r->n; j++)
            if (r->m[j] == c) { r->m[j] = r->m[--r->n]; break; }
    }
    c->nrooms = 0;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    grow((void **)&dead, &dead_cap, n_dead + 1, sizeof *dead);
    dead[n_dead++] = c;  /* freed at the end of the loop iteration */
}

/* queue raw bytes for c; written once at the end of the iteration */
static void queue(struct conn *c, const void *a, size_t na, const void *b, size_t nb) {
    if (c->dead) return;
    size_t need = (size_t)c->wlen + na + nb;
    if (need > MAX_WBUF) { c->closing = 1; return; } /* too slow: closed once flushed */
    if (need > c->wcap) {
        size_t nc = c->wcap ? c->wcap : 1024;
        while (nc < need) nc *= 2;
        uint8_t *nbuf = realloc(c->wbuf, nc);
        if (!nbuf) die_oom();
        c->wbuf = nbuf; c->wcap = (uint32_t)nc;
    }
    memcpy(c->wbuf + c->wlen, a, na);
    if (nb) memcpy(c->wbuf + c->wlen + na, b, nb);
    c->wlen += (uint32_t)(na + nb);
    if (!c->dirty) {
        c->dirty = 1;
        grow((void **)&dirty, &dirty_cap, n_dirty + 1, sizeof *dirty);
        dirty[n_dirty++] = c;
    }
}

static size_t frame_header(uint8_t *h, int op, int rsv1, size_t len) {
    h[0] = (uint8_t)(0x80 | (rsv1 ? 0x40 : 0) | op);
    if (len < 126) { h[1] = (uint8_t)len; return 2; }
    if (len < 65536) { h[1] = 126; h[2] = (uint8_t)(len >> 8); h[3] = (uint8_t)len; return 4; }
    h[1] = 127;
    for (int i = 0; i < 8; i++) h[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

static void send_frame(struct conn *c, int op, const void *p, size_t len) {
    uint8_t h[10];
    size_t hl = frame_header(h, op, 0, len);
    queue(c, h, hl, p, len);
}

static void flush(struct conn *c) {
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) { c->woff += (uint32_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { set_out(c, 1); return; }
        kill_conn(c);
        return;
    }
    free(c->wbuf); /* nothing queued: hold no buffer */
    c->wbuf = NULL; c->wlen = c->woff = c->wcap = 0;
    set_out(c, 0);
    if (c->closing) kill_conn(c);
}

/* ------------------------------------------------------------------ */
/* rooms                                                                */

static uint32_t hash_name(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) { h ^= (uint8_t)s[i]; h *= 16777619u; }
    return h;
}

static struct room *find_room(const char *name, size_t n, int create) {
    uint32_t b = hash_name(name, n) & (ROOM_BUCKETS - 1);
    for (struct room *r = buckets[b]; r; r = r->next)
        if (r->nlen == n && memcmp(r->name, name, n) == 0) return r;
    if (!create) return NULL;
    struct room *r = calloc(1, sizeof *r + n + 1);
    if (!r) die_oom();
    memcpy(r->name, name, n);
    r->nlen = (uint32_t)n;
    r->next = buckets[b];
    buckets[b] = r;
    return r;
}

static int in_room(struct conn *c, struct room *r) {
    for (int i = 0; i < c->nrooms; i++)
        if (c->rooms[i] == r) return 1;
    return 0;
}

/* ------------------------------------------------------------------ */
/* messages                                                             */

static inline const uint8_t *skip_ws(const uint8_t *p, const uint8_t *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* the raw (still escaped) contents of the string value of "key" in [p, e) */
static int str_field(const uint8_t *p, const uint8_t *e, const char *qkey, const uint8_t **s, size_t *n) {
    size_t kl = strlen(qkey);
    const uint8_t *f = memmem(p, (size_t)(e - p), qkey, kl);
    if (!f) return 0;
    f = skip_ws(f + kl, e);
    if (f >= e || *f != ':') return 0;
    f = skip_ws(f + 1, e);
    if (f >= e || *f != '"') return 0;
    const uint8_t *q = ++f;
    while (q < e && *q != '"') q += (*q == '\\') ? 2 : 1;
    if (q >= e) return 0;
    *s = f; *n = (size_t)(q - f);
    return 1;
}

static void reply(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(struct conn *c, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0 && (size_t)n < sizeof buf) send_frame(c, 1, buf, (size_t)n);
}

static void on_chat(struct conn *c, const uint8_t *d, const uint8_t *de, long long id) {
    const uint8_t *room, *text;
    size_t rl, tl;
    if (!str_field(d, de, "\"room\"", &room, &rl) || !str_field(d, de, "\"text\"", &text, &tl)) {
        if (id >= 0) reply(c, "[%lld,null,{\"code\":\"invalid_payload\",\"message\":\"chat needs {room, text}\"}]", id);
        return;
    }
    struct room *r = find_room((const char *)room, rl, 0);
    if (!r || !in_room(c, r)) {
        if (id >= 0) reply(c, "[%lld,null,{\"code\":\"not_in_room\",\"message\":\"join the room first\"}]", id);
        return;
    }
    /* encode once */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ms = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    size_t need = rl + tl + 128;
    grow((void **)&msgbuf, &msgcap, need, 1);
    int n = snprintf((char *)msgbuf, msgcap, "[\"chat\",{\"room\":\"%.*s\",\"text\":\"%.*s\",\"from\":\"c%u\",\"timestamp\":%lld}]",
                     (int)rl, (const char *)room, (int)tl, (const char *)text, c->id, ms);
    size_t plen = (size_t)n;
    uint8_t ph[10], zh[10];
    size_t phl = frame_header(ph, 1, 0, plen), zhl = 0, zlen = 0;
    int zready = 0, ztried = 0;
    uint32_t delivered = 0;
    for (uint32_t i = 0; i < r->n; i++) {
        struct conn *m = r->m[i];
        if (m == c) continue;
        delivered++;
        if (m->pmd && plen >= COMPRESS_MIN && !ztried) {
            /* compress once for every member that negotiated deflate */
            ztried = 1;
            grow((void **)&zbuf, &zcap, deflateBound(&zdef, plen) + 16, 1);
            deflateReset(&zdef);
            zdef.next_in = msgbuf; zdef.avail_in = (uInt)plen;
            zdef.next_out = zbuf; zdef.avail_out = (uInt)zcap;
            if (deflate(&zdef, Z_SYNC_FLUSH) == Z_OK && zdef.avail_in == 0) {
                zlen = zcap - zdef.avail_out;
                if (zlen >= 4 && memcmp(zbuf + zlen - 4, "\x00\x00\xff\xff", 4) == 0) zlen -= 4;
                if (zlen * 10 <= plen * 9) { zready = 1; zhl = frame_header(zh, 1, 1, zlen); }
            }
        }
        if (m->pmd && zready) queue(m, zh, zhl, zbuf, zlen);
        else queue(m, ph, phl, msgbuf, plen);
    }
    if (id >= 0) reply(c, "[%lld,{\"delivered\":%u}]", id, delivered);
}

static void on_message(struct conn *c, const uint8_t *p, size_t len) {
    const uint8_t *e = p + len;
    const uint8_t *q = skip_ws(p, e);
    if (q + 2 > e || q[0] != '[' || q[1] != '"') return;
    const uint8_t *name = q + 2, *ne = memchr(name, '"', (size_t)(e - name));
    if (!ne) return;
    size_t nl = (size_t)(ne - name);
    /* the id is the last element when it is a number: [..., 123] */
    const uint8_t *t = e;
    while (t > ne && (t[-1] == ' ' || t[-1] == '\n' || t[-1] == '\r' || t[-1] == '\t')) t--;
    if (t <= ne || t[-1] != ']') return;
    const uint8_t *close_br = --t, *dend = close_br;
    long long id = -1;
    const uint8_t *digits = t;
    while (digits > ne && digits[-1] >= '0' && digits[-1] <= '9') digits--;
    if (digits < t) {
        const uint8_t *k = digits;
        while (k > ne && (k[-1] == ' ')) k--;
        if (k > ne + 1 && k[-1] == ',') {
            const uint8_t *k2 = k - 1; /* must not be the comma right after the name */
            const uint8_t *after_name = skip_ws(ne + 1, e);
            if (k2 != after_name) {
                id = 0;
                for (const uint8_t *x = digits; x < t; x++) id = id * 10 + (*x - '0');
                dend = k2;
            }
        }
    }
    const uint8_t *d = skip_ws(ne + 1, e);
    if (d < dend && *d == ',') d = skip_ws(d + 1, dend);
    else d = dend; /* no data */

    if (nl == 4 && memcmp(name, "echo", 4) == 0) {
        if (id < 0) return;
        char h[32];
        int hn = snprintf(h, sizeof h, "[%lld,", id);
        size_t dl = (size_t)(dend - d);
        uint8_t fh[10];
        size_t fhl = frame_header(fh, 1, 0, (size_t)hn + dl + 1);
        queue(c, fh, fhl, h, (size_t)hn);
        queue(c, d, dl, "]", 1);
    } else if (nl == 4 && memcmp(name, "chat", 4) == 0) {
        on_chat(c, d, dend, id);
    } else if (nl == 4 && memcmp(name, "join", 4) == 0) {
        const uint8_t *room;
        size_t rl;
        if (!str_field(d, dend, "\"room\"", &room, &rl) || rl > 128) {
            if (id >= 0) reply(c, "[%lld,null,{\"code\":\"invalid_payload\",\"message\":\"join needs {room: str}\"}]", id);
            return;
        }
        struct room *r = find_room((const char *)room, rl, 1);
        if (!in_room(c, r)) {
            if (c->nrooms >= MAX_ROOMS_PER_CONN) {
                if (id >= 0) reply(c, "[%lld,null,{\"code\":\"room_limit\",\"message\":\"too many rooms\"}]", id);
                return;
            }
            if (r->n == r->cap) {
                uint32_t nc = r->cap ? r->cap * 2 : 16;
                struct conn **nm = realloc(r->m, nc * sizeof *nm);
                if (!nm) die_oom();
                r->m = nm; r->cap = nc;
            }
            r->m[r->n++] = c;
            c->rooms[c->nrooms++] = r;
        }
        if (id >= 0) reply(c, "[%lld,{\"room\":\"%.*s\",\"members\":%u}]", id, (int)rl, (const char *)room, r->n);
    } else if (nl == 5 && memcmp(name, "$pong", 5) == 0) {
        /* heartbeat answer: nothing to do */
    } else if (id >= 0) {
        reply(c, "[%lld,null,{\"code\":\"unknown_event\",\"message\":\"no handler\"}]", id);
    }
}

static void close_with(struct conn *c, int code) {
    uint8_t body[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    send_frame(c, 0x8, body, 2);
    c->closing = 1;
}

/* parse complete frames in [p, p+len); returns bytes consumed */
static size_t parse_frames(struct conn *c, uint8_t *p, size_t len) {
    size_t off = 0;
    while (!c->dead && !c->closing && len - off >= 2) {
        uint8_t *f = p + off;
        size_t avail = len - off;
        int fin = f[0] & 0x80, rsv = f[0] & 0x70, op = f[0] & 0x0F;
        if (!(f[1] & 0x80)) { close_with(c, 1002); break; } /* clients must mask */
        uint64_t pl = f[1] & 0x7F;
        size_t h = 2;
        if (pl == 126) { if (avail < 4) break; pl = (uint64_t)f[2] << 8 | f[3]; h = 4; }
        else if (pl == 127) {
            if (avail < 10) break;
            pl = 0;
            for (int i = 0; i < 8; i++) pl = pl << 8 | f[2 + i];
            h = 10;
        }
        if (pl > MAX_MSG) { close_with(c, 1009); break; }
        h += 4;
        if (avail < h + pl) break;
        uint8_t *data = f + h;
        const uint8_t *k = f + h - 4;
        for (uint64_t i = 0; i < pl; i++) data[i] ^= k[i & 3];
        off += h + (size_t)pl;
        if (rsv) { close_with(c, c->pmd && (rsv == 0x40) ? 1003 : 1002); break; }
        switch (op) {
        case 0x1: case 0x2:
            if (c->in_frag) { close_with(c, 1002); break; }
            if (fin) { on_message(c, data, (size_t)pl); break; }
            c->in_frag = 1; c->fop = (uint8_t)op; c->flen = 0;
            /* fall through to append */
            /* FALLTHROUGH */
        case 0x0: {
            if (!c->in_frag || c->flen + pl > MAX_MSG) { close_with(c, c->in_frag ? 1009 : 1002); break; }
            uint8_t *nf = realloc(c->frag, c->flen + pl + 1);
            if (!nf) die_oom();
            c->frag = nf;
            memcpy(c->frag + c->flen, data, (size_t)pl);
            c->flen += (uint32_t)pl;
            if (fin) {
                c->in_frag = 0;
                on_message(c, c->frag, c->flen);
                free(c->frag); c->frag = NULL; c->flen = 0;
            }
            break;
        }
        case 0x8: {
            int code = pl >= 2 ? (data[0] << 8 | data[1]) : 1000;
            close_with(c, code);
            break;
        }
        case 0x9: send_frame(c, 0xA, data, (size_t)pl); break;
        case 0xA: break;
        default: close_with(c, 1002);
        }
    }
    return off;
}

static int handshake(struct conn *c, uint8_t *p, size_t len, size_t *used) {
    uint8_t *end = memmem(p, len, "\r\n\r\n", 4);
    if (!end) return len > 8192 ? -1 : 0;
    *used = (size_t)(end - p) + 4;
    *end = 0;
    const char *key = NULL;
    size_t keyl = 0;
    int proto = 0, pmd = 0;
    for (char *line = strstr((char *)p, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        char *l = line + 2, *eol = strstr(l, "\r\n");
        size_t ll = eol ? (size_t)(eol - l) : strlen(l);
        if (ll > 18 && strncasecmp(l, "sec-websocket-key:", 18) == 0) {
            const char *v = l + 18;
            while (*v == ' ') v++;
            key = v;
            keyl = (size_t)(l + ll - v);
            while (keyl && key[keyl - 1] == ' ') keyl--;
        } else if (ll > 23 && strncasecmp(l, "sec-websocket-protocol:", 23) == 0) {
            if (memmem(l, ll, "smartsocket.v1", 14)) proto = 1;
        } else if (ll > 25 && strncasecmp(l, "sec-websocket-extensions:", 25) == 0) {
            if (deflate_enabled && memmem(l, ll, "permessage-deflate", 18)) pmd = 1;
        }
        if (!eol) break;
    }
    if (!key || keyl == 0 || keyl > 64) {
        const char *bad = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        queue(c, bad, strlen(bad), NULL, 0);
        c->closing = 1;
        return 1;
    }
    char buf[128], acc[40];
    memcpy(buf, key, keyl);
    memcpy(buf + keyl, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    uint8_t dig[20];
    sha1((uint8_t *)buf, keyl + 36, dig);
    base64(dig, 20, acc);
    char resp[512];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n%s%s\r\n",
                     acc, proto ? "Sec-WebSocket-Protocol: smartsocket.v1\r\n" : "",
                     pmd ? "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n" : "");
    queue(c, resp, (size_t)n, NULL, 0);
    c->ws = 1;
    c->pmd = (uint8_t)pmd;
    reply(c, "[\"$welcome\",{\"sid\":\"c%u\",\"pingInterval\":25000}]", c->id);
    return 1;
}

static void on_readable(struct conn *c) {
    for (int iter = 0; iter < 4 && !c->dead && !c->closing; iter++) {
        size_t have = c->rlen;
        if (have) { memcpy(scratch, c->rbuf, have); free(c->rbuf); c->rbuf = NULL; c->rlen = 0; }
        ssize_t n = recv(c->fd, scratch + have, SCRATCH - have, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            kill_conn(c);
            return;
        }
        size_t len = have + (n > 0 ? (size_t)n : 0);
        size_t off = 0;
        if (!c->ws) {
            size_t used = 0;
            int r = handshake(c, scratch, len, &used);
            if (r < 0) { kill_conn(c); return; }
            off = used;
        }
        if (c->ws && off < len) off += parse_frames(c, scratch + off, len - off);
        if (off < len && !c->dead && !c->closing) { /* keep the partial frame */
            c->rbuf = malloc(len - off);
            if (!c->rbuf) die_oom();
            memcpy(c->rbuf, scratch + off, len - off);
            c->rlen = (uint32_t)(len - off);
        }
        if (n < 0 || (size_t)n < SCRATCH - have) return; /* drained the socket */
    }
}

static void on_accept(int lfd) {
    for (int i = 0; i < 256; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) die_oom();
        c->fd = fd;
        c->id = next_id++;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) { close(fd); free(c); }
    }
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0;
    double lifetime = 3600;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--host") && i + 1 < argc) host = argv[++i];
        else if (!strcmp(argv[i], "--max-lifetime") && i + 1 < argc) lifetime = atof(argv[++i]);
        else if (!strcmp(argv[i], "--no-deflate")) deflate_enabled = 0;
        else { fprintf(stderr, "usage: cref --port P [--host 127.0.0.1] [--no-deflate] [--max-lifetime S]\n"); return 2; }
    }
    struct in_addr addr;
    if (port <= 0 || port > 65535 || inet_pton(AF_INET, host, &addr) != 1 || (ntohl(addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "cref: need --port and a loopback --host (127.x.x.x)\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    alarm(lifetime > 0 && lifetime < 86400 ? (unsigned)lifetime : 3600); /* safety net */
    scratch = malloc(SCRATCH);
    if (!scratch || deflateInit2(&zdef, 1, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) die_oom();

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr = addr};
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 4096) < 0) {
        perror("cref: bind/listen");
        return 1;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev);
    printf("c-reference listening on %s:%d (deflate %s)\n", host, port, deflate_enabled ? "on" : "off");
    fflush(stdout);

    struct epoll_event evs[1024];
    for (;;) {
        int n = epoll_wait(epfd, evs, 1024, 1000);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); return 1; }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) { on_accept(lfd); continue; }
            if (c->dead) continue;
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
            if (!c->dead && (evs[i].events & EPOLLOUT)) flush(c);
        }
        /* one send() per connection per iteration, with all of its frames */
        for (size_t i = 0; i < n_dirty; i++) {
            struct conn *c = dirty[i];
            c->dirty = 0;
            if (!c->dead) flush(c);
        }
        n_dirty = 0;
        for (size_t i = 0; i < n_dead; i++) {
            struct conn *c = dead[i];
            free(c->rbuf); free(c->wbuf); free(c->frag); free(c);
        }
        n_dead = 0;
    }
}

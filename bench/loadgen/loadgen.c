/*
 * loadgen.c - single-threaded epoll WebSocket load generator for the
 * SmartSocket benchmarks (bench/).  Talks to 127.0.0.1 only.
 *
 * Application protocols:
 *   smartsocket  SmartSocket wire protocol v1 (JSON arrays in text frames)
 *   socketio     Engine.IO v4 + Socket.IO v5, websocket transport only
 *
 * Workloads:
 *   ack      N clients x K acked "echo" requests in flight        -> acks/s
 *   latency  1 client, 1 request in flight (sequential)           -> RTT percentiles
 *   ack --rate R  the same N clients, but requests leave on a fixed schedule of R/s
 *            (open loop, at most K in flight per client); latency is measured
 *            from the scheduled send time                           -> p50/p99 at that load
 *            The generator busy-polls in this mode (no sleeping): every request
 *            leaves at its own scheduled time, one by one, instead of in small
 *            batches after a timer wake-up that a VM delivers ~20 us late and, now
 *            and then, milliseconds late.  How late each request actually left is
 *            reported (send_lag_us), and the CPU it spent working, not polling
 *            (cpu.busy_frac).
 *   fanout   M members join one room, member 0 publishes "chat"
 *            messages with at most W messages not fully delivered -> deliveries/s
 *            + delivery latency (send timestamp carried in the text)
 *   rooms    R rooms of M members (R x M connections); the first member of
 *            every room publishes with at most W messages of its room not
 *            fully delivered                                      -> deliveries/s
 *   idle     N connections opened (at most C handshakes at a time) and held
 *            idle; the caller reads the server's RSS               -> connect time
 *
 * --deflate offers permessage-deflate (client_max_window_bits) and inflates
 * compressed (RSV1) messages with zlib: one inflater per connection when the
 * server keeps its context; when it answers server_no_context_takeover every
 * message stands alone, so a payload identical to one inflated just before
 * (the same broadcast reaching the next member) is taken from a small cache
 * after a full byte comparison.  --words fills chat text with words instead of
 * 'x' (realistic, compressible).  Wire bytes of every delivered chat frame are
 * counted (header + payload as received).
 *
 * Phases: setup (connect + handshake (+ join)), warmup (traffic, not counted),
 * measure (counted; "#MEASURE_START"/"#MEASURE_END" lines are printed on
 * stdout so the caller can sample the server's CPU), drain (no new traffic,
 * wait for outstanding replies, bounded).  The last stdout line is one JSON
 * object with the results.  Every phase is bounded in time and an alarm()
 * kills the process if something goes badly wrong.
 *
 * Build: cc -O2 -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

/* ------------------------------------------------------------------ */
/* options                                                              */

enum { P_SMART = 0, P_SIO = 1 };
enum { W_ACK = 0, W_LATENCY = 1, W_FANOUT = 2, W_ROOMS = 3, W_IDLE = 4 };
static const char *proto_names[] = {"smartsocket", "socketio"};
static const char *wl_names[] = {"ack", "latency", "fanout", "rooms", "idle"};

static struct {
    int proto, workload, port, port2, clients, inflight, members, window, payload;
    int connect_conc, rooms, deflate, words;
    double duration, warmup, connect_timeout, drain_timeout, rate;
    const char *path, *room;
    long long max_messages;
} opt = {
    .proto = P_SMART, .workload = W_ACK, .port = 0, .port2 = 0, .clients = 50,
    .inflight = 16, .members = 1000, .window = 8, .payload = 64,
    .connect_conc = 64, .rooms = 1000, .deflate = 0, .words = 0,
    .duration = 10.0, .warmup = 1.0,
    .connect_timeout = 30.0, .drain_timeout = 5.0, .rate = 0.0, .path = NULL,
    .room = NULL, .max_messages = 2000000000LL,
};

static inline int is_fan(void) { return opt.workload == W_FANOUT || opt.workload == W_ROOMS; }

/* ------------------------------------------------------------------ */
/* time, rng, histogram                                                 */

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint64_t rng_state = 88172645463325252ULL;
static inline uint64_t rng64(void) {
    uint64_t x = rng_state;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return rng_state = x;
}

/* log-linear histogram of nanoseconds: exact below 128 ns, then 64 sub
 * buckets per power of two (< 1.6 % relative error). */
#define H_SUB 64
#define H_LIN 128
#define H_MAXEXP 44
#define H_SIZE (H_LIN + (H_MAXEXP - 7 + 1) * H_SUB)
struct histo { uint64_t b[H_SIZE]; uint64_t n, max; double sum; };
static struct histo lat_h; /* the latencies this run reports */
static struct histo lag_h; /* rate mode: how late each request left vs its scheduled time */

static inline int h_index(uint64_t v) {
    if (v < H_LIN) return (int)v;
    int k = 63 - __builtin_clzll(v); /* >= 7 */
    if (k > H_MAXEXP) return H_SIZE - 1;
    int sub = (int)((v >> (k - 6)) & (H_SUB - 1));
    return H_LIN + (k - 7) * H_SUB + sub;
}
static double h_value(int i) { /* bucket midpoint */
    if (i < H_LIN) return i;
    int k = (i - H_LIN) / H_SUB + 7;
    int sub = (i - H_LIN) % H_SUB;
    double lo = (double)(1ULL << k) + (double)sub * (double)(1ULL << (k - 6));
    return lo + (double)(1ULL << (k - 6)) / 2.0;
}
static inline void histo_add(struct histo *h, int64_t v) {
    if (v < 0) v = 0;
    h->b[h_index((uint64_t)v)]++;
    h->n++;
    h->sum += (double)v;
    if ((uint64_t)v > h->max) h->max = (uint64_t)v;
}
static double histo_pct(const struct histo *h, double p) {
    if (!h->n) return 0;
    uint64_t want = (uint64_t)(p * (double)h->n);
    if (want < 1) want = 1;
    uint64_t acc = 0;
    for (int i = 0; i < H_SIZE; i++) {
        acc += h->b[i];
        if (acc >= want) {
            double v = h_value(i);
            return v > (double)h->max ? (double)h->max : v;
        }
    }
    return (double)h->max;
}
static inline void hist_add(int64_t v) { histo_add(&lat_h, v); }

/* ------------------------------------------------------------------ */
/* SHA-1 + base64 (for Sec-WebSocket-Key / Sec-WebSocket-Accept)        */

#define ROL32(x, n) (((x) << (n)) | ((x) >> (32 - (n))))
static void sha1_block(uint32_t h[5], const uint8_t *p) {
    uint32_t w[80], a, b, c, d, e, f, k, t;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
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
    uint8_t tail[128];
    size_t r = len - i;
    memset(tail, 0, sizeof tail);
    memcpy(tail, data + i, r);
    tail[r] = 0x80;
    size_t tl = (r + 1 + 8 <= 64) ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int j = 0; j < 8; j++) tail[tl - 1 - j] = (uint8_t)(bits >> (8 * j));
    sha1_block(h, tail);
    if (tl == 128) sha1_block(h, tail + 64);
    for (int j = 0; j < 5; j++) {
        out[4 * j] = (uint8_t)(h[j] >> 24); out[4 * j + 1] = (uint8_t)(h[j] >> 16);
        out[4 * j + 2] = (uint8_t)(h[j] >> 8); out[4 * j + 3] = (uint8_t)h[j];
    }
}
static void base64(const uint8_t *in, size_t n, char *out) {
    static const char T[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = T[v >> 18]; out[o++] = T[(v >> 12) & 63];
        out[o++] = T[(v >> 6) & 63]; out[o++] = T[v & 63];
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
/* connections                                                          */

enum {
    CS_IDLE = 0, CS_CONNECTING, CS_HANDSHAKE, CS_WAIT_OPEN, CS_WAIT_SIO_CONNECT,
    CS_READY, CS_JOINING, CS_JOINED, CS_CLOSED
};
enum { K_ECHO = 1, K_JOIN = 2, K_CHAT = 3 };

struct slot { uint32_t id; uint8_t pending, kind; int64_t t0; };

struct conn {
    int fd, idx, state, dirty, epollout;
    uint8_t *rbuf; size_t rlen, rcap;
    uint8_t *wbuf; size_t wlen, woff, wcap;
    uint8_t *frag; size_t flen, fcap; int fop, in_frag, fcomp; size_t fwire;
    int inflight;
    uint32_t next_id;
    struct slot *slots; uint32_t smask;
    int pmd, nctx;       /* permessage-deflate negotiated; server_no_context_takeover */
    z_stream *zs;        /* inflater (context takeover only), created on first use */
    int64_t t_connect;   /* connect() time, for the handshake latency of "idle" */
    char key[32];
};

/* fan-out state: one entry per room (fanout: 1 room; rooms: R rooms) */
struct room {
    uint64_t next_seq, low_seq;
    uint32_t *cnt;       /* deliveries per pending sequence number (ring) */
    int pump;            /* queued in pump_list */
    char name[64];
};
static struct room *rooms;
static int n_rooms, *pump_list, n_pump;

static struct conn *conns;
static struct conn **dirty_list;
static int n_dirty;
static int n_conns, epfd;
static int64_t g_now;

enum { PH_SETUP = 0, PH_WARMUP, PH_MEASURE, PH_DRAIN, PH_DONE };
static int phase = PH_SETUP;

/* counters */
static int n_started, n_ready, n_joined, n_closed_run, n_subproto_ok;
static long long join_members_max = -1;
static long long sent_total, acks_total, ack_errors, acks_window, unexpected_acks;
static long long echo_mismatch, server_pings, other_msgs, ws_pings;
static long long g_inflight;
static long long msgs_sent, msgs_complete, chat_acks, chat_acks_window, delivered_acked_sum;
static long long delivered_mismatch, deliveries_total, deliveries_window, self_deliveries;
static long long bad_seq, over_deliveries;
static long long msgs_sent_window;
static uint64_t seq_mask;
static uint32_t expected_per_msg;
/* wire accounting of delivered chat frames (measured window) */
static size_t cur_msg_wire, cur_msg_len; static int cur_msg_comp;
static long long wire_bytes_window, payload_bytes_window, compressed_window;
static long long n_pmd, n_nctx, inflate_calls, inflate_hits, inflate_errors;
/* rate mode (ack --rate) */
static int64_t t_rate0; static long long sched_n, rate_blocked; static int rate_rr;
static int64_t sched_t0; /* when > 0: the t0 alloc_id stores */
static int64_t rate_idle_ns; /* measure window: time spent in polls that found nothing to do */
static char *payload_str; /* 'p' * payload */
static int64_t t_start, t_setup_done, t_measure_start, t_measure_end, t_drain_start, t_end;
static struct rusage ru_m0, ru_m1;

static void out_fail(const char *stage, const char *fmt, ...);

static void set_events(struct conn *c, int want_out) {
    if (c->epollout == want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->epollout = want_out;
}

static void reserve(uint8_t **buf, size_t *cap, size_t used, size_t extra) {
    if (used + extra <= *cap) return;
    size_t nc = *cap ? *cap : 4096;
    while (nc < used + extra) nc *= 2;
    uint8_t *nb = realloc(*buf, nc);
    if (!nb) { fprintf(stderr, "loadgen: out of memory\n"); exit(3); }
    *buf = nb; *cap = nc;
}

static inline void mark_dirty(struct conn *c) {
    if (!c->dirty) { c->dirty = 1; dirty_list[n_dirty++] = c; }
}

/* append one masked client frame to the write buffer */
static void ws_send(struct conn *c, int opcode, const void *data, size_t len) {
    if (c->state == CS_CLOSED) return;
    reserve(&c->wbuf, &c->wcap, c->wlen, len + 14);
    uint8_t *p = c->wbuf + c->wlen;
    size_t h;
    p[0] = (uint8_t)(0x80 | opcode);
    if (len < 126) { p[1] = (uint8_t)(0x80 | len); h = 2; }
    else if (len < 65536) { p[1] = 0x80 | 126; p[2] = (uint8_t)(len >> 8); p[3] = (uint8_t)len; h = 4; }
    else {
        p[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++) p[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
        h = 10;
    }
    uint32_t key = (uint32_t)rng64();
    memcpy(p + h, &key, 4);
    const uint8_t *k = p + h;
    h += 4;
    uint8_t *m = p + h;
    const uint8_t *s = data;
    uint64_t k8 = (uint64_t)key | ((uint64_t)key << 32);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v; memcpy(&v, s + i, 8); v ^= k8; memcpy(m + i, &v, 8);
    }
    for (; i < len; i++) m[i] = s[i] ^ k[i & 3];
    c->wlen += h + len;
    mark_dirty(c);
}

static void conn_close(struct conn *c) {
    if (c->state == CS_CLOSED) return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    g_inflight -= c->inflight;
    c->inflight = 0;
    c->state = CS_CLOSED;
}

/* a connection failed or was closed by the server */
static void conn_lost(struct conn *c, const char *why) {
    if (c->state == CS_CLOSED) return;
    if (phase == PH_SETUP) out_fail("setup", "connection %d: %s", c->idx, why);
    if (n_closed_run < 5) fprintf(stderr, "loadgen: connection %d lost during run: %s\n", c->idx, why);
    n_closed_run++;
    conn_close(c);
}

static void conn_flush(struct conn *c) {
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n > 0) { c->woff += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (c->woff > 65536) { /* compact */
                memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
                c->wlen -= c->woff; c->woff = 0;
            }
            set_events(c, 1);
            return;
        }
        char why[96];
        snprintf(why, sizeof why, "send: %s", n < 0 ? strerror(errno) : "zero write");
        conn_lost(c, why);
        return;
    }
    c->woff = c->wlen = 0;
    set_events(c, 0);
}

static void flush_dirty(void) {
    for (int i = 0; i < n_dirty; i++) {
        struct conn *c = dirty_list[i];
        c->dirty = 0;
        if (c->state != CS_CLOSED) conn_flush(c);
    }
    n_dirty = 0;
}

/* ------------------------------------------------------------------ */
/* request bookkeeping                                                  */

static uint32_t alloc_id(struct conn *c, int kind) {
    /* ids are positive and unique among pending requests of a connection */
    for (uint32_t tries = 0; tries <= c->smask; tries++) {
        uint32_t id = ++c->next_id;
        if (id == 0 || id > 2000000000u) { c->next_id = 0; id = ++c->next_id; }
        struct slot *s = &c->slots[id & c->smask];
        if (!s->pending) {
            s->id = id; s->pending = 1; s->kind = (uint8_t)kind;
            s->t0 = sched_t0 > 0 ? sched_t0 : (opt.workload == W_LATENCY) ? now_ns() : g_now;
            c->inflight++; g_inflight++; sent_total++;
            return id;
        }
    }
    return 0; /* table full: caller does not send */
}

static char *msgbuf; /* scratch for one outgoing message: payload + 4 KiB */
static size_t msgcap;
static char *textbuf; /* chat text: payload + 64 */

static void send_echo(struct conn *c) {
    if (sent_total >= opt.max_messages) return;
    uint32_t id = alloc_id(c, K_ECHO);
    if (!id) return;
    int n;
    if (opt.proto == P_SMART)
        n = snprintf(msgbuf, msgcap, "[\"echo\",\"%s\",%u]", payload_str, id);
    else
        n = snprintf(msgbuf, msgcap, "42%u[\"echo\",\"%s\"]", id, payload_str);
    ws_send(c, 1, msgbuf, (size_t)n);
}

static inline int room_of(const struct conn *c) { return c->idx / opt.members; }
static inline int is_publisher(const struct conn *c) { return c->idx % opt.members == 0; }

static void send_join(struct conn *c) {
    uint32_t id = alloc_id(c, K_JOIN);
    const char *room = rooms[room_of(c)].name;
    int n;
    if (opt.proto == P_SMART)
        n = snprintf(msgbuf, msgcap, "[\"join\",{\"room\":\"%s\"},%u]", room, id);
    else
        n = snprintf(msgbuf, msgcap, "42%u[\"join\",{\"room\":\"%s\"}]", id, room);
    c->state = CS_JOINING;
    ws_send(c, 1, msgbuf, (size_t)n);
}

/* chat text made of common words: compresses like real chat, never repeats exactly */
static const char *const WORDS[] = {
    "the", "be", "to", "of", "and", "a", "in", "that", "have", "it", "for", "not", "on", "with",
    "he", "as", "you", "do", "at", "this", "but", "his", "by", "from", "they", "we", "say", "her",
    "she", "or", "an", "will", "my", "one", "all", "would", "there", "their", "what", "so", "up",
    "out", "if", "about", "who", "get", "which", "go", "me", "when", "make", "can", "like", "time",
    "no", "just", "him", "know", "take", "people", "into", "year", "your", "good", "some", "could",
    "them", "see", "other", "than", "then", "now", "look", "only", "come", "its", "over", "think",
    "also", "back", "after", "use", "two", "how", "our", "work", "first", "well", "way", "even",
    "new", "want", "because", "any", "these", "give", "day", "most", "us", "meeting", "tomorrow",
    "deploy", "server", "release", "coffee", "lunch", "weekend", "thanks", "great", "sounds",
    "review", "branch", "merge", "ticket", "customer", "dashboard", "latency", "room", "message",
    "client", "issue", "fixed", "broken", "again", "please", "check", "later", "today", "really",
};
#define N_WORDS (sizeof WORDS / sizeof WORDS[0])

static int fill_text(char *text, int tl, int want) {
    if (!opt.words) {
        while (tl < want) text[tl++] = 'x';
        return tl;
    }
    int cap = 1; /* capitalize the next word */
    while (tl < want) {
        const char *w = WORDS[rng64() % N_WORDS];
        int wl = (int)strlen(w);
        if (tl + wl + 2 > want) { while (tl < want) text[tl++] = '.'; break; }
        memcpy(text + tl, w, (size_t)wl);
        if (cap) text[tl] = (char)toupper((unsigned char)text[tl]);
        tl += wl;
        uint64_t r = rng64() % 16;
        cap = 0;
        if (r == 0) { text[tl++] = '.'; cap = 1; }
        else if (r == 1) text[tl++] = ',';
        else if (r == 2) { text[tl++] = '?'; cap = 1; }
        text[tl++] = ' ';
    }
    return tl;
}

static int send_chat(struct conn *c) {
    uint32_t id = alloc_id(c, K_CHAT);
    if (!id) return 0;
    int r = room_of(c);
    struct room *R = &rooms[r];
    uint64_t seq = R->next_seq++;
    R->cnt[seq & seq_mask] = 0;
    char *text = textbuf;
    int tl = snprintf(text, 80, "t=%lld s=%llu r=%d ", (long long)now_ns(), (unsigned long long)seq, r);
    tl = fill_text(text, tl, opt.payload);
    text[tl] = 0;
    int n;
    if (opt.proto == P_SMART)
        n = snprintf(msgbuf, msgcap, "[\"chat\",{\"room\":\"%s\",\"text\":\"%s\"},%u]", R->name, text, id);
    else
        n = snprintf(msgbuf, msgcap, "42%u[\"chat\",{\"room\":\"%s\",\"text\":\"%s\"}]", id, R->name, text);
    ws_send(c, 1, msgbuf, (size_t)n);
    msgs_sent++;
    if (phase == PH_MEASURE) msgs_sent_window++;
    return 1;
}

static inline void mark_pump(int r) {
    if (!rooms[r].pump) { rooms[r].pump = 1; pump_list[n_pump++] = r; }
}

static void pump_room(int r) {
    struct room *R = &rooms[r];
    struct conn *c = &conns[r * opt.members];
    if (c->state == CS_CLOSED) return;
    while (R->next_seq - R->low_seq < (uint64_t)opt.window && (uint32_t)c->inflight < (c->smask + 1) / 2 &&
           msgs_sent < opt.max_messages) {
        if (!send_chat(c)) break;
    }
}

/* publish on every room whose window or ack slots opened up since the last call */
static void pump_publisher(void) {
    if (!is_fan()) return;
    if (phase != PH_WARMUP && phase != PH_MEASURE) return;
    int n = n_pump;
    n_pump = 0;
    for (int i = 0; i < n; i++) {
        int r = pump_list[i];
        rooms[r].pump = 0;
        pump_room(r);
    }
}

/* ack --rate: send the requests that are due on the fixed schedule */
static void send_echo(struct conn *c);
static void pump_rate(void) {
    if (opt.rate <= 0 || (phase != PH_WARMUP && phase != PH_MEASURE)) return;
    int64_t t = now_ns();
    double due = (double)(t - t_rate0) * opt.rate / 1e9;
    while ((double)sched_n < due && sent_total < opt.max_messages) {
        struct conn *c = NULL;
        for (int tries = 0; tries < n_conns; tries++) {
            struct conn *x = &conns[rate_rr];
            rate_rr = (rate_rr + 1) % n_conns;
            if (x->state == CS_READY && x->inflight < opt.inflight) { c = x; break; }
        }
        if (!c) { rate_blocked++; return; } /* every client has K in flight: the server is behind */
        sched_t0 = t_rate0 + (int64_t)((double)sched_n * 1e9 / opt.rate);
        if (phase == PH_MEASURE) histo_add(&lag_h, t - sched_t0);  /* incl. waits for a free slot */
        send_echo(c);
        sched_t0 = 0;
        sched_n++;
    }
}

/* ------------------------------------------------------------------ */
/* message parsing helpers (no JSON parser: only what we need)          */

static inline const uint8_t *skip_ws(const uint8_t *p, const uint8_t *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}
static const uint8_t *parse_u64(const uint8_t *p, const uint8_t *e, unsigned long long *out) {
    unsigned long long v = 0;
    const uint8_t *s = p;
    while (p < e && *p >= '0' && *p <= '9') { v = v * 10 + (unsigned)(*p - '0'); p++; }
    *out = v;
    return p == s ? NULL : p;
}
/* find "key" then ':' and parse an unsigned int */
static long long find_int_field(const uint8_t *p, size_t len, const char *qkey) {
    size_t kl = strlen(qkey);
    const uint8_t *e = p + len;
    const uint8_t *f = memmem(p, len, qkey, kl);
    if (!f) return -1;
    f = skip_ws(f + kl, e);
    if (f >= e || *f != ':') return -1;
    f = skip_ws(f + 1, e);
    unsigned long long v;
    if (!parse_u64(f, e, &v)) return -1;
    return (long long)v;
}
static inline int starts_with(const uint8_t *p, const uint8_t *e, const char *s) {
    size_t n = strlen(s);
    return (size_t)(e - p) >= n && memcmp(p, s, n) == 0;
}

/* ------------------------------------------------------------------ */
/* application events                                                   */

static void start_traffic_conn(struct conn *c);

static void on_ready(struct conn *c) {
    c->state = CS_READY;
    n_ready++;
    if (opt.workload == W_IDLE && phase == PH_SETUP) hist_add(now_ns() - c->t_connect);
    if (is_fan()) send_join(c);
}

static void on_ack(struct conn *c, uint32_t id, const uint8_t *res, const uint8_t *e, int is_err) {
    struct slot *s = &c->slots[id & c->smask];
    if (!s->pending || s->id != id) { unexpected_acks++; return; }
    s->pending = 0;
    c->inflight--; g_inflight--;
    int64_t t = (opt.workload == W_LATENCY) ? now_ns() : g_now;
    switch (s->kind) {
    case K_ECHO:
        acks_total++;
        if (is_err) ack_errors++;
        else {
            /* the result must be our payload string */
            size_t cmp = opt.payload < 16 ? (size_t)opt.payload : 16;
            if (e - res < (ptrdiff_t)(cmp + 1) || res[0] != '"' || memcmp(res + 1, payload_str, cmp) != 0)
                echo_mismatch++;
        }
        if (phase == PH_MEASURE) { acks_window++; hist_add(t - s->t0); }
        if ((phase == PH_WARMUP || phase == PH_MEASURE) && opt.rate <= 0) send_echo(c);
        break;
    case K_JOIN: {
        if (is_err) out_fail("setup", "join refused by server on connection %d: %.*s", c->idx,
                             (int)(e - res > 200 ? 200 : e - res), (const char *)res);
        long long m = find_int_field(res, (size_t)(e - res), "\"members\"");
        if (m > join_members_max) join_members_max = m;
        c->state = CS_JOINED;
        n_joined++;
        break;
    }
    case K_CHAT: {
        chat_acks++;
        if (phase == PH_MEASURE) chat_acks_window++;
        if (is_err) { ack_errors++; break; }
        long long d = find_int_field(res, (size_t)(e - res), "\"delivered\"");
        if (d >= 0) delivered_acked_sum += d;
        if (d != (long long)expected_per_msg) delivered_mismatch++;
        mark_pump(room_of(c));
        break;
    }
    }
}

static void on_chat(struct conn *c, const uint8_t *p, const uint8_t *e) {
    deliveries_total++;
    if (!is_fan()) { other_msgs++; return; }
    if (is_publisher(c)) { self_deliveries++; return; }
    const uint8_t *f = memmem(p, (size_t)(e - p), "\"t=", 3);
    if (!f) { bad_seq++; return; }
    unsigned long long ts, seq, r;
    const uint8_t *q = parse_u64(f + 3, e, &ts);
    if (!q || q + 3 > e || memcmp(q, " s=", 3) != 0 || !(q = parse_u64(q + 3, e, &seq)) ||
        q + 3 > e || memcmp(q, " r=", 3) != 0 || !parse_u64(q + 3, e, &r)) { bad_seq++; return; }
    if (r != (unsigned long long)room_of(c)) { bad_seq++; return; } /* another room's message */
    if (phase == PH_MEASURE) {
        deliveries_window++;
        hist_add(g_now - (int64_t)ts);
        wire_bytes_window += (long long)cur_msg_wire;
        payload_bytes_window += (long long)cur_msg_len;
        compressed_window += cur_msg_comp;
    }
    struct room *R = &rooms[r];
    if (seq < R->low_seq || seq >= R->next_seq) { bad_seq++; return; }
    uint32_t *cnt = &R->cnt[seq & seq_mask];
    (*cnt)++;
    if (*cnt == expected_per_msg) {
        msgs_complete++;
        uint64_t before = R->low_seq;
        while (R->low_seq < R->next_seq && R->cnt[R->low_seq & seq_mask] >= expected_per_msg) R->low_seq++;
        if (R->low_seq != before) mark_pump((int)r);
    } else if (*cnt > expected_per_msg) {
        over_deliveries++;
    }
}

static void on_message_smart(struct conn *c, const uint8_t *p, size_t len) {
    const uint8_t *e = p + len;
    const uint8_t *q = skip_ws(p, e);
    if (q >= e || *q != '[') { other_msgs++; return; }
    q = skip_ws(q + 1, e);
    if (q < e && *q >= '0' && *q <= '9') {
        unsigned long long id;
        q = parse_u64(q, e, &id);
        q = skip_ws(q, e);
        if (q >= e || *q != ',') { /* [id] : ack without result */
            if (q < e && *q == ']') on_ack(c, (uint32_t)id, q, e, 0);
            else other_msgs++;
            return;
        }
        q = skip_ws(q + 1, e);
        int is_err = 0;
        if (starts_with(q, e, "null")) {
            const uint8_t *r = skip_ws(q + 4, e);
            if (r < e && *r == ',') is_err = 1;
        }
        on_ack(c, (uint32_t)id, q, e, is_err);
        return;
    }
    if (starts_with(q, e, "\"chat\"")) { on_chat(c, q, e); return; }
    if (starts_with(q, e, "\"$ping\"")) {
        const uint8_t *r = skip_ws(q + 7, e);
        if (r < e && *r == ',') r = skip_ws(r + 1, e);
        const uint8_t *end = r;
        while (end < e && *end != ']' && *end != ' ') end++;
        int n = snprintf(msgbuf, msgcap, "[\"$pong\",%.*s]", (int)(end - r), (const char *)r);
        ws_send(c, 1, msgbuf, (size_t)n);
        server_pings++;
        return;
    }
    if (starts_with(q, e, "\"$welcome\"")) {
        if (c->state == CS_WAIT_OPEN) on_ready(c);
        return;
    }
    other_msgs++;
}

static void on_message_sio(struct conn *c, const uint8_t *p, size_t len) {
    const uint8_t *e = p + len;
    if (len < 1) { other_msgs++; return; }
    switch (p[0]) {
    case '0': /* engine.io open */
        if (c->state == CS_WAIT_OPEN) {
            ws_send(c, 1, "40", 2);
            c->state = CS_WAIT_SIO_CONNECT;
        }
        return;
    case '1': conn_lost(c, "engine.io close packet"); return;
    case '2': { /* engine.io ping -> pong with same payload */
        msgbuf[0] = '3';
        size_t n = len - 1 < msgcap - 1 ? len - 1 : msgcap - 1;
        memcpy(msgbuf + 1, p + 1, n);
        ws_send(c, 1, msgbuf, n + 1);
        server_pings++;
        return;
    }
    case '3': return;
    case '4': break;
    default: other_msgs++; return;
    }
    if (len < 2) { other_msgs++; return; }
    const uint8_t *q = p + 2;
    switch (p[1]) {
    case '0':
        if (c->state == CS_WAIT_SIO_CONNECT) on_ready(c);
        return;
    case '1': conn_lost(c, "socket.io disconnect packet"); return;
    case '4':
        if (phase == PH_SETUP)
            out_fail("setup", "socket.io connect error on connection %d: %.*s", c->idx,
                     (int)(len > 200 ? 200 : len), (const char *)p);
        other_msgs++;
        return;
    case '3': {
        unsigned long long id;
        const uint8_t *r = parse_u64(q, e, &id);
        if (!r) { other_msgs++; return; }
        r = skip_ws(r, e);
        if (r < e && *r == '[') r = skip_ws(r + 1, e);
        on_ack(c, (uint32_t)id, r, e, 0);
        return;
    }
    case '2': {
        while (q < e && *q >= '0' && *q <= '9') q++;
        q = skip_ws(q, e);
        if (q < e && *q == '[') q = skip_ws(q + 1, e);
        if (starts_with(q, e, "\"chat\"")) { on_chat(c, q, e); return; }
        other_msgs++;
        return;
    }
    default: other_msgs++; return;
    }
}

static void on_message(struct conn *c, const uint8_t *p, size_t len) {
    if (opt.proto == P_SMART) on_message_smart(c, p, len);
    else on_message_sio(c, p, len);
}

/* ------------------------------------------------------------------ */
/* websocket framing (incoming)                                         */

#define MAX_FRAME (64u << 20)

/* permessage-deflate: raw inflate of one message (RFC 7692 7.2.2: append 00 00 ff ff) */
static uint8_t *inf_buf; static size_t inf_cap;
static z_stream zs_shared; static int zs_shared_ok;

static z_stream *new_inflater(void) {
    z_stream *zs = calloc(1, sizeof *zs);
    if (!zs || inflateInit2(zs, -15) != Z_OK) { fprintf(stderr, "loadgen: inflateInit2 failed\n"); exit(3); }
    return zs;
}

static long inflate_msg(z_stream *zs, const uint8_t *in, size_t len) {
    static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
    size_t used = 0;
    inflate_calls++;
    for (int part = 0; part < 2; part++) {
        zs->next_in = (Bytef *)(part ? tail : in);
        zs->avail_in = (uInt)(part ? 4 : len);
        for (int guard = 0; guard < 100000; guard++) {
            reserve(&inf_buf, &inf_cap, used, 16384);
            zs->next_out = inf_buf + used;
            zs->avail_out = (uInt)(inf_cap - used);
            int rc = inflate(zs, Z_SYNC_FLUSH);
            used = (size_t)(zs->next_out - inf_buf);
            if (rc == Z_STREAM_END) { inflateReset(zs); if (zs->avail_in == 0) break; continue; }
            if (rc != Z_OK && rc != Z_BUF_ERROR) return -1;
            if (used > MAX_FRAME) return -1;
            if (zs->avail_out != 0 && zs->avail_in == 0) break;
            if (rc == Z_BUF_ERROR && zs->avail_out != 0) return -1; /* no progress */
        }
    }
    return (long)used;
}

/* no_context_takeover: every message stands alone, and a broadcast reaches
 * each member as the same bytes: remember a few recent inflations */
#define IC_SIZE 4096 /* entries; buffers are allocated on first use */
static struct { uint8_t *comp, *out; size_t clen, olen, ccap, ocap; uint64_t key; } icache[IC_SIZE];

static uint64_t payload_key(const uint8_t *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ n, v;
    size_t offs[4] = {0, n / 2, n >= 8 ? n - 8 : 0, n / 4};
    for (int i = 0; i < 4; i++) {
        v = 0;
        if (n >= 8) memcpy(&v, p + (offs[i] + 8 <= n ? offs[i] : n - 8), 8);
        else if (n) memcpy(&v, p, n);
        h = (h ^ v) * 0xff51afd7ed558ccdULL;
        h ^= h >> 33;
    }
    return h;
}

static void deliver_data(struct conn *c, uint8_t *pl, size_t len, int comp, size_t wire) {
    cur_msg_wire = wire;
    cur_msg_comp = comp;
    if (!comp) { cur_msg_len = len; on_message(c, pl, len); return; }
    if (c->nctx) {
        uint64_t k = payload_key(pl, len);
        int slot = (int)(k & (IC_SIZE - 1));
        if (icache[slot].key == k && icache[slot].clen == len && memcmp(icache[slot].comp, pl, len) == 0) {
            inflate_hits++;
            cur_msg_len = icache[slot].olen;
            on_message(c, icache[slot].out, icache[slot].olen);
            return;
        }
        if (!zs_shared_ok) {
            if (inflateInit2(&zs_shared, -15) != Z_OK) { fprintf(stderr, "loadgen: inflateInit2 failed\n"); exit(3); }
            zs_shared_ok = 1;
        } else {
            inflateReset(&zs_shared);
        }
        long n = inflate_msg(&zs_shared, pl, len);
        if (n < 0) { inflate_errors++; conn_lost(c, "inflate failed (no_context_takeover stream)"); return; }
        reserve(&icache[slot].comp, &icache[slot].ccap, 0, len);
        reserve(&icache[slot].out, &icache[slot].ocap, 0, (size_t)n + 1);
        memcpy(icache[slot].comp, pl, len);
        memcpy(icache[slot].out, inf_buf, (size_t)n);
        icache[slot].clen = len; icache[slot].olen = (size_t)n; icache[slot].key = k;
        cur_msg_len = (size_t)n;
        on_message(c, icache[slot].out, (size_t)n);
        return;
    }
    if (!c->zs) c->zs = new_inflater();
    long n = inflate_msg(c->zs, pl, len);
    if (n < 0) { inflate_errors++; conn_lost(c, "inflate failed"); return; }
    cur_msg_len = (size_t)n;
    on_message(c, inf_buf, (size_t)n);
}

static void handle_frame(struct conn *c, int fin, int op, int comp, uint8_t *pl, size_t len, size_t wire) {
    switch (op) {
    case 0x9: ws_pings++; ws_send(c, 0xA, pl, len); return; /* ping -> pong */
    case 0xA: return;
    case 0x8: {
        uint8_t body[2] = {0x03, 0xE8};
        if (len >= 2) { body[0] = pl[0]; body[1] = pl[1]; }
        char why[160];
        snprintf(why, sizeof why, "server sent close (code %d%s%.*s)", len >= 2 ? (pl[0] << 8 | pl[1]) : 1005,
                 len > 2 ? ": " : "", (int)(len > 2 ? (len - 2 > 100 ? 100 : len - 2) : 0), (const char *)pl + 2);
        ws_send(c, 0x8, body, 2);
        conn_flush(c);
        conn_lost(c, why);
        return;
    }
    case 0x1: case 0x2:
        if (c->in_frag) { conn_lost(c, "new data frame inside a fragmented message"); return; }
        if (fin) { deliver_data(c, pl, len, comp, wire); return; }
        c->in_frag = 1; c->fop = op; c->flen = 0; c->fcomp = comp; c->fwire = wire;
        reserve(&c->frag, &c->fcap, 0, len);
        memcpy(c->frag, pl, len); c->flen = len;
        return;
    case 0x0:
        if (!c->in_frag) { conn_lost(c, "unexpected continuation frame"); return; }
        if (c->flen + len > MAX_FRAME) { conn_lost(c, "fragmented message too large"); return; }
        reserve(&c->frag, &c->fcap, c->flen, len);
        memcpy(c->frag + c->flen, pl, len); c->flen += len; c->fwire += wire;
        if (fin) { c->in_frag = 0; deliver_data(c, c->frag, c->flen, c->fcomp, c->fwire); }
        return;
    default:
        conn_lost(c, "unknown websocket opcode");
    }
}

static void parse_frames(struct conn *c) {
    size_t off = 0;
    while (c->state != CS_CLOSED) {
        size_t avail = c->rlen - off;
        if (avail < 2) break;
        uint8_t *p = c->rbuf + off;
        int fin = p[0] & 0x80, op = p[0] & 0x0F, masked = p[1] & 0x80;
        int comp = 0;
        if (p[0] & 0x70) {
            /* RSV1 = compressed, only on the first frame of a data message, only if negotiated */
            if ((p[0] & 0x70) != 0x40 || !c->pmd || (op != 0x1 && op != 0x2)) {
                conn_lost(c, c->pmd ? "unexpected RSV bits" : "unexpected RSV bits (compression not negotiated)");
                return;
            }
            comp = 1;
        }
        uint64_t len = p[1] & 0x7F;
        size_t h = 2;
        if (len == 126) {
            if (avail < 4) break;
            len = (uint64_t)p[2] << 8 | p[3]; h = 4;
        } else if (len == 127) {
            if (avail < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = len << 8 | p[2 + i];
            h = 10;
        }
        if (len > MAX_FRAME) { conn_lost(c, "frame too large"); return; }
        if (masked) h += 4;
        if (avail < h + len) {
            /* make sure the whole frame fits once it has arrived */
            if (h + len > c->rcap - off) {
                memmove(c->rbuf, c->rbuf + off, avail);
                c->rlen = avail; off = 0;
                reserve(&c->rbuf, &c->rcap, 0, h + len + 4096);
            }
            break;
        }
        uint8_t *pl = p + h;
        if (masked) {
            const uint8_t *k = p + h - 4;
            for (uint64_t i = 0; i < len; i++) pl[i] ^= k[i & 3];
        }
        off += h + (size_t)len;
        handle_frame(c, fin, op, comp, pl, (size_t)len, h + (size_t)len);
    }
    if (c->state == CS_CLOSED) return;
    if (off) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
}

static void parse_handshake(struct conn *c) {
    uint8_t *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
    if (!end) {
        if (c->rlen > 32768) conn_lost(c, "handshake response too large");
        return;
    }
    size_t hl = (size_t)(end - c->rbuf) + 4;
    char *hdr = malloc(hl + 1);
    memcpy(hdr, c->rbuf, hl); hdr[hl] = 0;
    if (strncmp(hdr, "HTTP/1.1 101", 12) != 0) {
        char *nl = strstr(hdr, "\r\n");
        if (nl) *nl = 0;
        out_fail("setup", "handshake refused on connection %d: '%.120s'", c->idx, hdr);
    }
    /* verify Sec-WebSocket-Accept */
    char accept_want[64], buf[128];
    int bl = snprintf(buf, sizeof buf, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", c->key);
    uint8_t dig[20];
    sha1((uint8_t *)buf, (size_t)bl, dig);
    base64(dig, 20, accept_want);
    int ok = 0;
    for (char *line = strstr(hdr, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        char *l = line + 2;
        if (strncasecmp(l, "sec-websocket-accept:", 21) == 0) {
            char *v = l + 21;
            while (*v == ' ') v++;
            ok = strncmp(v, accept_want, strlen(accept_want)) == 0;
        } else if (strncasecmp(l, "sec-websocket-extensions:", 25) == 0) {
            char *v = l + 25, *eol = strstr(v, "\r\n");
            char ext[256];
            size_t el = eol ? (size_t)(eol - v) : strlen(v);
            if (el >= sizeof ext) el = sizeof ext - 1;
            memcpy(ext, v, el); ext[el] = 0;
            if (opt.deflate && strcasestr(ext, "permessage-deflate")) {
                c->pmd = 1; n_pmd++;
                if (strcasestr(ext, "server_no_context_takeover")) { c->nctx = 1; n_nctx++; }
            }
        } else if (strncasecmp(l, "sec-websocket-protocol:", 23) == 0) {
            char *v = l + 23;
            while (*v == ' ') v++;
            if (strncmp(v, "smartsocket.v1", 14) == 0) n_subproto_ok++;
        }
    }
    free(hdr);
    if (!ok) out_fail("setup", "bad Sec-WebSocket-Accept on connection %d", c->idx);
    memmove(c->rbuf, c->rbuf + hl, c->rlen - hl);
    c->rlen -= hl;
    c->state = CS_WAIT_OPEN;
    parse_frames(c);
}

static void on_readable(struct conn *c) {
    for (int iter = 0; iter < 8 && c->state != CS_CLOSED; iter++) {
        reserve(&c->rbuf, &c->rcap, c->rlen, 16384);
        size_t space = c->rcap - c->rlen;
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, space, 0);
        if (n > 0) {
            g_now = now_ns();
            c->rlen += (size_t)n;
            if (c->state == CS_HANDSHAKE) parse_handshake(c);
            else parse_frames(c);
            if ((size_t)n < space) return;
            continue;
        }
        if (n == 0) { conn_lost(c, "connection closed by server (EOF)"); return; }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        char why[96];
        snprintf(why, sizeof why, "recv: %s", strerror(errno));
        conn_lost(c, why);
        return;
    }
}

/* --port2: odd-numbered connections go to the second server (a second cluster node); the
 * publisher of each room (index % members == 0, even when members is even) stays on --port */
static int conn_port(const struct conn *c) { return opt.port2 > 0 && (c->idx & 1) ? opt.port2 : opt.port; }

static void send_handshake(struct conn *c) {
    uint8_t raw[16];
    for (int i = 0; i < 16; i++) raw[i] = (uint8_t)rng64();
    base64(raw, 16, c->key);
    int n = snprintf(msgbuf, msgcap,
                     "GET %s HTTP/1.1\r\n"
                     "Host: 127.0.0.1:%d\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n"
                     "%s%s"
                     "User-Agent: smartsocket-bench-loadgen\r\n"
                     "\r\n",
                     opt.path, conn_port(c), c->key,
                     opt.proto == P_SMART ? "Sec-WebSocket-Protocol: smartsocket.v1\r\n" : "",
                     opt.deflate ? "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" : "");
    reserve(&c->wbuf, &c->wcap, c->wlen, (size_t)n);
    memcpy(c->wbuf + c->wlen, msgbuf, (size_t)n);
    c->wlen += (size_t)n;
    c->state = CS_HANDSHAKE;
    conn_flush(c);
}

static void start_connect(struct conn *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) out_fail("setup", "socket(): %s (connection %d)", strerror(errno), c->idx);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)conn_port(c))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* 127.0.0.1 only */
    c->fd = fd;
    c->state = CS_CONNECTING;
    c->t_connect = now_ns();
    int r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    if (r < 0 && errno != EINPROGRESS)
        out_fail("setup", "connect to 127.0.0.1:%d failed: %s (connection %d)", conn_port(c), strerror(errno), c->idx);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    c->epollout = 1;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) out_fail("setup", "epoll_ctl: %s", strerror(errno));
    n_started++;
}

static void on_event(struct conn *c, uint32_t evs) {
    if (c->state == CS_CLOSED) return;
    if (c->state == CS_CONNECTING) {
        if (evs & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
            int err = 0; socklen_t el = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
            if (err) out_fail("setup", "connect to 127.0.0.1:%d failed: %s (connection %d)", conn_port(c), strerror(err), c->idx);
            send_handshake(c);
        }
        return;
    }
    if (evs & EPOLLIN) on_readable(c);
    else if (evs & (EPOLLERR | EPOLLHUP)) { conn_lost(c, "socket error/hangup"); return; }
    if (c->state != CS_CLOSED && (evs & EPOLLOUT)) conn_flush(c);
}

/* ------------------------------------------------------------------ */
/* output                                                               */

static double tv_s(struct timeval tv) { return (double)tv.tv_sec + (double)tv.tv_usec / 1e6; }

static void print_common(FILE *f) {
    fprintf(f, "\"proto\":\"%s\",\"workload\":\"%s\",\"port\":%d,\"port2\":%d,\"clients\":%d,\"inflight\":%d,"
               "\"members\":%d,\"window\":%d,\"payload_size\":%d,",
            proto_names[opt.proto], wl_names[opt.workload], opt.port, opt.port2, n_conns,
            is_fan() ? 0 : opt.inflight, is_fan() ? opt.members : 0,
            is_fan() ? opt.window : 0, opt.payload);
    fprintf(f, "\"rooms\":%d,\"deflate_offered\":%s,\"rate_offered\":%.1f,\"connect_concurrency\":%d,",
            is_fan() ? n_rooms : 0, opt.deflate ? "true" : "false", opt.rate, opt.connect_conc);
    fprintf(f, "\"started\":%d,\"ready\":%d,\"joined\":%d,", n_started, n_ready, n_joined);
}

static void out_fail(const char *stage, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "loadgen: %s failed: %s\n", stage, msg);
    printf("{\"ok\":false,\"stage\":\"%s\",\"error\":\"", stage);
    for (char *p = msg; *p; p++) {
        if (*p == '"' || *p == '\\') putchar('\\');
        putchar((unsigned char)*p < 0x20 ? ' ' : *p);
    }
    printf("\",");
    print_common(stdout);
    printf("\"elapsed_s\":%.3f}\n", (double)(now_ns() - t_start) / 1e9);
    fflush(stdout);
    exit(2);
}

static void print_histo(const char *name, const struct histo *h) {
    printf("\"%s\":{\"count\":%llu,\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f,"
           "\"mean\":%.1f},",
           name, (unsigned long long)h->n, histo_pct(h, 0.50) / 1e3, histo_pct(h, 0.90) / 1e3,
           histo_pct(h, 0.99) / 1e3, histo_pct(h, 0.999) / 1e3, (double)h->max / 1e3,
           h->n ? h->sum / (double)h->n / 1e3 : 0.0);
}

static void print_results(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double win = (double)(t_measure_end - t_measure_start) / 1e9;
    if (win <= 0) win = 1e-9;
    double mu = tv_s(ru_m1.ru_utime) - tv_s(ru_m0.ru_utime);
    double ms = tv_s(ru_m1.ru_stime) - tv_s(ru_m0.ru_stime);
    double tot_wall = (double)(t_end - t_start) / 1e9;
    int drained;
    long long lost;
    double rate;
    const char *unit;
    if (is_fan()) {
        drained = (msgs_complete == msgs_sent) && g_inflight == 0;
        lost = msgs_sent * (long long)expected_per_msg - deliveries_total;
        rate = (double)deliveries_window / win;
        unit = "deliveries/s";
    } else if (opt.workload == W_IDLE) {
        drained = g_inflight == 0;
        lost = 0;
        double st = (double)(t_setup_done - t_start) / 1e9;
        rate = st > 0 ? (double)n_ready / st : 0.0;
        unit = "connections/s";
    } else {
        drained = g_inflight == 0;
        lost = sent_total - acks_total;
        rate = (double)acks_window / win;
        unit = "acks/s";
    }
    printf("{\"ok\":true,");
    print_common(stdout);
    printf("\"duration_s\":%.4f,\"warmup_s\":%.3f,\"setup_s\":%.3f,\"drain_s\":%.3f,\"elapsed_s\":%.3f,",
           win, opt.warmup, (double)(t_setup_done - t_start) / 1e9, (double)(t_end - t_drain_start) / 1e9, tot_wall);
    printf("\"rate\":%.1f,\"unit\":\"%s\",\"drained\":%s,\"lost\":%lld,", rate, unit, drained ? "true" : "false", lost);
    printf("\"sent_total\":%lld,\"acks_total\":%lld,\"acks_window\":%lld,\"ack_errors\":%lld,"
           "\"unexpected_acks\":%lld,\"echo_mismatch\":%lld,",
           sent_total, acks_total, acks_window, ack_errors, unexpected_acks, echo_mismatch);
    printf("\"messages_sent\":%lld,\"messages_sent_window\":%lld,\"messages_complete\":%lld,\"chat_acks\":%lld,"
           "\"chat_acks_window\":%lld,\"deliveries_total\":%lld,\"deliveries_window\":%lld,"
           "\"expected_per_message\":%u,\"expected_deliveries\":%lld,\"delivered_acked_sum\":%lld,"
           "\"delivered_mismatch\":%lld,\"self_deliveries\":%lld,\"bad_seq\":%lld,\"over_deliveries\":%lld,"
           "\"join_members_max\":%lld,",
           msgs_sent, msgs_sent_window, msgs_complete, chat_acks, chat_acks_window, deliveries_total,
           deliveries_window, expected_per_msg, msgs_sent * (long long)expected_per_msg, delivered_acked_sum,
           delivered_mismatch, self_deliveries, bad_seq, over_deliveries, join_members_max);
    printf("\"deflate\":{\"negotiated\":%lld,\"no_context_takeover\":%lld,\"compressed_deliveries_window\":%lld,"
           "\"wire_bytes_window\":%lld,\"payload_bytes_window\":%lld,\"inflate_calls\":%lld,\"inflate_cache_hits\":%lld,"
           "\"inflate_errors\":%lld},",
           n_pmd, n_nctx, compressed_window, wire_bytes_window, payload_bytes_window, inflate_calls, inflate_hits,
           inflate_errors);
    printf("\"wire_bytes_per_delivery\":%.1f,\"payload_bytes_per_delivery\":%.1f,",
           deliveries_window ? (double)wire_bytes_window / (double)deliveries_window : 0.0,
           deliveries_window ? (double)payload_bytes_window / (double)deliveries_window : 0.0);
    printf("\"rate_scheduled\":%lld,\"rate_blocked\":%lld,", sched_n, rate_blocked);
    printf("\"closed_during_run\":%d,\"subprotocol_echoed\":%d,\"server_pings\":%lld,\"ws_pings\":%lld,"
           "\"other_messages\":%lld,",
           n_closed_run, n_subproto_ok, server_pings, ws_pings, other_msgs);
    print_histo("lat_us", &lat_h);
    if (opt.rate > 0) print_histo("send_lag_us", &lag_h);
    /* busy_frac: the share of the window spent working (in rate mode, without the empty polls;
     * otherwise the same as frac) */
    double busy = (mu + ms) / win;
    if (opt.rate > 0) busy = 1.0 - (double)rate_idle_ns / 1e9 / win;
    if (busy < 0) busy = 0;
    if (busy > (mu + ms) / win) busy = (mu + ms) / win;
    printf("\"cpu\":{\"user_s\":%.3f,\"sys_s\":%.3f,\"wall_s\":%.4f,\"frac\":%.3f,\"busy_frac\":%.3f},",
           mu, ms, win, (mu + ms) / win, busy);
    printf("\"cpu_total\":{\"user_s\":%.3f,\"sys_s\":%.3f,\"wall_s\":%.3f,\"frac\":%.3f}}\n", tv_s(ru.ru_utime),
           tv_s(ru.ru_stime), tot_wall, (tv_s(ru.ru_utime) + tv_s(ru.ru_stime)) / (tot_wall > 0 ? tot_wall : 1));
    fflush(stdout);
}

/* ------------------------------------------------------------------ */
/* main loop                                                            */

static void start_traffic(void) {
    t_setup_done = now_ns();
    phase = PH_WARMUP;
    if (is_fan()) {
        for (int r = 0; r < n_rooms; r++) mark_pump(r);
        pump_publisher();
    } else if (opt.workload == W_IDLE) {
        /* nothing to send: the connections stay idle (pings are answered) */
    } else if (opt.rate > 0) {
        t_rate0 = now_ns();
        pump_rate();
    } else {
        for (int i = 0; i < n_conns; i++) start_traffic_conn(&conns[i]);
    }
}

static void start_traffic_conn(struct conn *c) {
    for (int k = 0; k < opt.inflight && c->state != CS_CLOSED; k++) send_echo(c);
}

static int drained_now(void) {
    if (is_fan()) return msgs_complete == msgs_sent && g_inflight == 0;
    return g_inflight == 0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --proto smartsocket|socketio --port P [--port2 P2] --workload ack|latency|fanout|rooms|idle\n"
            "               [--clients N] [--inflight K] [--rate R] [--duration S] [--warmup S]\n"
            "               [--members M] [--rooms R] [--window W] [--payload-size B] [--words]\n"
            "               [--deflate] [--path PATH] [--room NAME]\n"
            "               [--connect-timeout S] [--drain-timeout S] [--connect-concurrency C]\n"
            "               [--max-messages N] [--seed N]\n"
            "  fanout: one room of M members; rooms: R rooms of M members; --window: per room\n");
    exit(1);
}

int main(int argc, char **argv) {
    static struct option lo[] = {
        {"proto", 1, 0, 'P'}, {"port", 1, 0, 'p'}, {"workload", 1, 0, 'w'}, {"clients", 1, 0, 'c'},
        {"inflight", 1, 0, 'k'}, {"duration", 1, 0, 'd'}, {"warmup", 1, 0, 'u'}, {"members", 1, 0, 'm'},
        {"window", 1, 0, 'W'}, {"payload-size", 1, 0, 'b'}, {"path", 1, 0, 'x'}, {"room", 1, 0, 'r'},
        {"connect-timeout", 1, 0, 'T'}, {"drain-timeout", 1, 0, 'D'}, {"connect-concurrency", 1, 0, 'C'},
        {"max-messages", 1, 0, 'M'}, {"seed", 1, 0, 's'}, {"help", 0, 0, 'h'}, {"rooms", 1, 0, 'R'},
        {"deflate", 0, 0, 'Z'}, {"words", 0, 0, 'O'}, {"rate", 1, 0, 'a'}, {"port2", 1, 0, 'q'}, {0, 0, 0, 0}};
    int ch;
    unsigned long long seed = (unsigned long long)now_ns() ^ ((unsigned long long)getpid() << 32);
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'P':
            if (!strcmp(optarg, "smartsocket")) opt.proto = P_SMART;
            else if (!strcmp(optarg, "socketio")) opt.proto = P_SIO;
            else usage();
            break;
        case 'p': opt.port = atoi(optarg); break;
        case 'q': opt.port2 = atoi(optarg); break;
        case 'w':
            if (!strcmp(optarg, "ack")) opt.workload = W_ACK;
            else if (!strcmp(optarg, "latency")) opt.workload = W_LATENCY;
            else if (!strcmp(optarg, "fanout")) opt.workload = W_FANOUT;
            else if (!strcmp(optarg, "rooms")) opt.workload = W_ROOMS;
            else if (!strcmp(optarg, "idle")) opt.workload = W_IDLE;
            else usage();
            break;
        case 'c': opt.clients = atoi(optarg); break;
        case 'k': opt.inflight = atoi(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'u': opt.warmup = atof(optarg); break;
        case 'm': opt.members = atoi(optarg); break;
        case 'W': opt.window = atoi(optarg); break;
        case 'b': opt.payload = atoi(optarg); break;
        case 'x': opt.path = optarg; break;
        case 'r': opt.room = optarg; break;
        case 'T': opt.connect_timeout = atof(optarg); break;
        case 'D': opt.drain_timeout = atof(optarg); break;
        case 'C': opt.connect_conc = atoi(optarg); break;
        case 'M': opt.max_messages = atoll(optarg); break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'R': opt.rooms = atoi(optarg); break;
        case 'Z': opt.deflate = 1; break;
        case 'O': opt.words = 1; break;
        case 'a': opt.rate = atof(optarg); break;
        default: usage();
        }
    }
    if (opt.port <= 0 || opt.port > 65535 || opt.port2 < 0 || opt.port2 > 65535) usage();
    if (opt.duration <= 0 || opt.duration > 3600 || opt.warmup < 0 || opt.warmup > 600) usage();
    if (opt.connect_timeout <= 0 || opt.connect_timeout > 600 || opt.drain_timeout < 0 || opt.drain_timeout > 600) usage();
    if (opt.payload < 1 || opt.payload > (1 << 20)) usage();
    if (opt.connect_conc < 1) opt.connect_conc = 1;
    if (opt.workload == W_LATENCY) { opt.clients = 1; opt.inflight = 1; }
    if (opt.rate < 0 || opt.rate > 1e8 || (opt.rate > 0 && opt.workload != W_ACK)) usage();
    if (is_fan()) {
        n_rooms = opt.workload == W_FANOUT ? 1 : opt.rooms;
        if (opt.members < 2 || opt.members > 100000) usage();
        if (n_rooms < 1 || (long long)n_rooms * opt.members > 100000) usage();
        if (opt.window < 1 || opt.window > 100000) usage();
        opt.clients = n_rooms * opt.members;
        opt.inflight = 1;
    }
    if (opt.workload == W_IDLE) opt.inflight = 1;
    if (opt.clients < 1 || opt.clients > 100000 || opt.inflight < 1 || opt.inflight > 100000) usage();
    static char room_buf[64];
    if (!opt.room) { /* a fresh room per run: leftovers of an earlier run never count */
        snprintf(room_buf, sizeof room_buf, "bench-%d", (int)getpid());
        opt.room = room_buf;
    }
    if (strlen(opt.room) > 40) usage();
    if (!opt.path) opt.path = opt.proto == P_SMART ? "/" : "/socket.io/?EIO=4&transport=websocket";
    rng_state = seed ? seed : 1;
    for (int i = 0; i < 8; i++) rng64();

    /* hard safety net: everything is bounded by these times */
    double budget = opt.connect_timeout + opt.warmup + opt.duration + opt.drain_timeout + 30.0;
    alarm((unsigned)budget);
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* die with the bench tool */
    prctl(PR_SET_TIMERSLACK, 1000UL);  /* 1 us: timer wake-ups stay on time */
    signal(SIGPIPE, SIG_IGN);

    /* file descriptors */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt.clients + 64) {
        rlim_t want = (rlim_t)opt.clients + 64;
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) rl.rlim_max = want; /* works as root */
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            fprintf(stderr, "loadgen: cannot raise RLIMIT_NOFILE to %llu: %s\n", (unsigned long long)want, strerror(errno));
            exit(1);
        }
    }

    n_conns = opt.clients;
    conns = calloc((size_t)n_conns, sizeof *conns);
    dirty_list = calloc((size_t)n_conns, sizeof *dirty_list);
    uint32_t slots = 64;
    uint32_t need = (uint32_t)(is_fan() ? opt.window : opt.inflight) * 2;
    while (slots < need) slots *= 2;
    for (int i = 0; i < n_conns; i++) {
        conns[i].idx = i; conns[i].fd = -1;
        uint32_t s = ((is_fan() && i % opt.members != 0) || opt.workload == W_IDLE) ? 4 : slots;
        conns[i].slots = calloc(s, sizeof(struct slot));
        conns[i].smask = s - 1;
    }
    msgcap = (size_t)opt.payload + 4096;
    msgbuf = malloc(msgcap);
    textbuf = malloc((size_t)opt.payload + 128);
    payload_str = malloc((size_t)opt.payload + 1);
    memset(payload_str, 'p', (size_t)opt.payload);
    payload_str[opt.payload] = 0;
    if (is_fan()) {
        expected_per_msg = (uint32_t)opt.members - 1;
        uint64_t r = 16;
        while (r < (uint64_t)opt.window * 2) r *= 2;
        seq_mask = r - 1;
        rooms = calloc((size_t)n_rooms, sizeof *rooms);
        pump_list = calloc((size_t)n_rooms, sizeof *pump_list);
        for (int i = 0; i < n_rooms; i++) {
            rooms[i].cnt = calloc(r, sizeof *rooms[i].cnt);
            if (n_rooms == 1) snprintf(rooms[i].name, sizeof rooms[i].name, "%s", opt.room);
            else snprintf(rooms[i].name, sizeof rooms[i].name, "%s-%d", opt.room, i);
        }
    }

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) { perror("epoll_create1"); return 1; }
    struct epoll_event evs[1024];

    t_start = g_now = now_ns();
    int64_t setup_deadline = t_start + (int64_t)(opt.connect_timeout * 1e9);
    int64_t t_warm_end = 0, t_meas_end = 0, t_drain_end = 0;
    int next_connect = 0;

    while (phase != PH_DONE) {
        int64_t t = g_now = now_ns();
        /* phase transitions */
        if (phase == PH_SETUP) {
            int target = is_fan() ? n_joined : n_ready;
            if (target == n_conns) {
                start_traffic();
                t_warm_end = now_ns() + (int64_t)(opt.warmup * 1e9);
            } else if (t > setup_deadline) {
                out_fail("setup", "timed out after %.1f s: %d/%d connected, %d ready, %d joined",
                         opt.connect_timeout, n_started, n_conns, n_ready, n_joined);
            } else {
                while (next_connect < n_conns &&
                       (n_started - (is_fan() ? n_joined : n_ready)) < opt.connect_conc)
                    start_connect(&conns[next_connect++]);
            }
        }
        if (phase == PH_WARMUP && t >= t_warm_end) {
            phase = PH_MEASURE;
            getrusage(RUSAGE_SELF, &ru_m0);
            t_measure_start = now_ns();
            printf("#MEASURE_START\n");
            fflush(stdout);
            t_meas_end = t_measure_start + (int64_t)(opt.duration * 1e9);
        }
        if (phase == PH_MEASURE && t >= t_meas_end) {
            t_measure_end = now_ns();
            getrusage(RUSAGE_SELF, &ru_m1);
            printf("#MEASURE_END\n");
            fflush(stdout);
            phase = PH_DRAIN;
            t_drain_start = t_measure_end;
            t_drain_end = t_drain_start + (int64_t)(opt.drain_timeout * 1e9);
        }
        if (phase == PH_DRAIN && (drained_now() || t >= t_drain_end)) {
            phase = PH_DONE;
            break;
        }
        if ((phase == PH_WARMUP || phase == PH_MEASURE || phase == PH_DRAIN) && n_closed_run == n_conns) {
            fprintf(stderr, "loadgen: all connections lost\n");
            if (phase != PH_DRAIN) {
                t_measure_end = now_ns();
                if (phase == PH_WARMUP) { t_measure_start = t_measure_end; getrusage(RUSAGE_SELF, &ru_m0); }
                getrusage(RUSAGE_SELF, &ru_m1);
                t_drain_start = t_measure_end;
            }
            phase = PH_DONE;
            break;
        }
        int64_t next = setup_deadline;
        if (phase == PH_WARMUP) next = t_warm_end;
        else if (phase == PH_MEASURE) next = t_meas_end;
        else if (phase == PH_DRAIN) next = t_drain_end;
        int spin = opt.rate > 0 && (phase == PH_WARMUP || phase == PH_MEASURE);
        if (spin) next = t; /* rate mode: poll without sleeping, see the top of this file */
        int64_t wait_ns = next - t;
        if (wait_ns < 0) wait_ns = 0;
        if (wait_ns > 100000000) wait_ns = 100000000;
        struct timespec tmo = {.tv_sec = wait_ns / 1000000000, .tv_nsec = wait_ns % 1000000000};

        int n = epoll_pwait2(epfd, evs, 1024, &tmo, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 1;
        }
        g_now = now_ns();
        for (int i = 0; i < n; i++) on_event(evs[i].data.ptr, evs[i].events);
        pump_publisher();
        long long sent_before = sent_total;
        pump_rate();
        flush_dirty();
        if (spin && phase == PH_MEASURE && n == 0 && sent_total == sent_before)
            rate_idle_ns += now_ns() - t; /* an empty poll: idle time, spent spinning */
    }
    t_end = now_ns();
    print_results();
    /* polite, best-effort close (1000) so servers do not log abnormal closures */
    for (int i = 0; i < n_conns; i++) {
        struct conn *c = &conns[i];
        if (c->state == CS_CLOSED || c->fd < 0 || c->state < CS_WAIT_OPEN) continue;
        uint8_t body[2] = {0x03, 0xE8};
        ws_send(c, 0x8, body, 2);
    }
    flush_dirty();
    return 0;
}

/* BLAKE2b (RFC 7693), unkeyed, with a digest length and a 16-byte personalization: what
 * hashlib.blake2b(digest_size=..., person=...) computes. Used by _native.c for event ids.
 * The state is plain data: copying it (memcpy) forks a hash, as hasher.copy() does. */
#ifndef OTLP_METER_BLAKE2B_H
#define OTLP_METER_BLAKE2B_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint64_t h[8];
    uint64_t t[2];
    uint8_t buf[128];
    size_t buflen;
    size_t outlen;
} blake2b_state;

static const uint64_t blake2b_iv[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t blake2b_sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t blake2b_load64(const uint8_t *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
#else
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
#endif
}

static inline uint64_t blake2b_rotr(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

#define BLAKE2B_G(a, b, c, d, x, y)            \
    do {                                        \
        a = a + b + (x);                        \
        d = blake2b_rotr(d ^ a, 32);            \
        c = c + d;                              \
        b = blake2b_rotr(b ^ c, 24);            \
        a = a + b + (y);                        \
        d = blake2b_rotr(d ^ a, 16);            \
        c = c + d;                              \
        b = blake2b_rotr(b ^ c, 63);            \
    } while (0)

static void blake2b_compress(blake2b_state *s, const uint8_t block[128], int last) {
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++) m[i] = blake2b_load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = s->h[i];
        v[i + 8] = blake2b_iv[i];
    }
    v[12] ^= s->t[0];
    v[13] ^= s->t[1];
    if (last) v[14] = ~v[14];
    for (int r = 0; r < 12; r++) {
        const uint8_t *z = blake2b_sigma[r];
        BLAKE2B_G(v[0], v[4], v[8], v[12], m[z[0]], m[z[1]]);
        BLAKE2B_G(v[1], v[5], v[9], v[13], m[z[2]], m[z[3]]);
        BLAKE2B_G(v[2], v[6], v[10], v[14], m[z[4]], m[z[5]]);
        BLAKE2B_G(v[3], v[7], v[11], v[15], m[z[6]], m[z[7]]);
        BLAKE2B_G(v[0], v[5], v[10], v[15], m[z[8]], m[z[9]]);
        BLAKE2B_G(v[1], v[6], v[11], v[12], m[z[10]], m[z[11]]);
        BLAKE2B_G(v[2], v[7], v[8], v[13], m[z[12]], m[z[13]]);
        BLAKE2B_G(v[3], v[4], v[9], v[14], m[z[14]], m[z[15]]);
    }
    for (int i = 0; i < 8; i++) s->h[i] ^= v[i] ^ v[i + 8];
}

/* outlen 1..64; person: 16 bytes or NULL (zeros). */
static void blake2b_init(blake2b_state *s, size_t outlen, const uint8_t person[16]) {
    uint8_t param[64];
    memset(param, 0, sizeof param);
    param[0] = (uint8_t)outlen; /* digest length */
    param[2] = 1;               /* fanout */
    param[3] = 1;               /* depth */
    if (person != NULL) memcpy(param + 48, person, 16);
    for (int i = 0; i < 8; i++) s->h[i] = blake2b_iv[i] ^ blake2b_load64(param + 8 * i);
    s->t[0] = s->t[1] = 0;
    s->buflen = 0;
    s->outlen = outlen;
}

static void blake2b_update(blake2b_state *s, const uint8_t *in, size_t n) {
    while (n > 0) {
        if (s->buflen == 128) { /* a full block, and more input: it is not the last one */
            s->t[0] += 128;
            if (s->t[0] < 128) s->t[1]++;
            blake2b_compress(s, s->buf, 0);
            s->buflen = 0;
        }
        size_t take = 128 - s->buflen;
        if (take > n) take = n;
        memcpy(s->buf + s->buflen, in, take);
        s->buflen += take;
        in += take;
        n -= take;
    }
}

/* The digest of what was fed; s is left as it was (final works on a copy). */
static void blake2b_final(const blake2b_state *state, uint8_t *out) {
    blake2b_state s = *state;
    s.t[0] += s.buflen;
    if (s.t[0] < s.buflen) s.t[1]++;
    memset(s.buf + s.buflen, 0, 128 - s.buflen);
    blake2b_compress(&s, s.buf, 1);
    uint8_t full[64];
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++) full[8 * i + j] = (uint8_t)(s.h[i] >> (8 * j));
    memcpy(out, full, s.outlen);
}

#endif

/* The sequential NPU's firmware: the Tessera ISA executed one instruction at a time.
 *
 * This is tessera.sim.emulator's run loop and exec_<op> functions in C, for a small in-order CPU
 * (hdl/seq: PicoRV32 on the iCE40 UP5K). It fetches, decodes and schedules exactly as the emulator
 * does (unit queues of QUEUE_DEPTH, token queues of TOKEN_DEPTH, the oldest ready head first), so
 * its results, error codes and error pcs are the emulator's. The same file is compiled for the host
 * (tests/hdl/test_seq_firmware.py) and for the CPU (target.c); both supply the platform in seq.h.
 *
 * cfg.h is generated from tessera.arch.NpuConfig and tessera.isa (hdl/seq/firmware.py): the buffer
 * sizes and the instruction fields are written once, in Python.
 */
#include "seq.h"

/* ---- instruction fields ------------------------------------------------------------------------ */

static uint32_t field(const uint32_t *w, unsigned pos, unsigned width, unsigned sgn) {
    unsigned i = pos >> 5, s = pos & 31;
    uint64_t v = w[i] >> s;
    if (s + width > 32)
        v |= (uint64_t)w[i + 1] << (32 - s);
    uint32_t mask = width == 32 ? 0xFFFFFFFFu : ((1u << width) - 1);
    uint32_t u = (uint32_t)v & mask;
    if (sgn && width < 32 && (u >> (width - 1)))
        u |= ~mask;
    return u;
}

#define F(w, spec) field((w), spec)
#define FS(w, spec) ((int32_t)field((w), spec))

/* ---- integer numerics (tessera.numerics, docs/numerics.md) ------------------------------------- */

static int64_t round_shift(int64_t x, unsigned s) {
    s &= 63;
    if (s > MAX_SHIFT)
        s = MAX_SHIFT;
    if (s == 0)
        return x;
    int64_t half = (int64_t)1 << (s - 1);
    return (x + half - 1 + ((x >> s) & 1)) >> s;
}

static unsigned bit_length(uint64_t a) {
    /* A binary search: EPILOGUE calls this twice an output value, and a bit-by-bit loop was most of it. */
    unsigned n = 0;
    uint32_t v = (uint32_t)a;
    if (a >> 32) { n = 32; v = (uint32_t)(a >> 32); }
    if (v >> 16) { n += 16; v >>= 16; }
    if (v >> 8) { n += 8; v >>= 8; }
    if (v >> 4) { n += 4; v >>= 4; }
    if (v >> 2) { n += 2; v >>= 2; }
    if (v >> 1) { n += 1; v >>= 1; }
    return n + v;
}

static int64_t round_sig(int64_t x) {
    uint64_t a = x < 0 ? (uint64_t)(-x) : (uint64_t)x;
    unsigned b = bit_length(a);
    if (b <= SIG_BITS)
        return x;
    unsigned s = b - SIG_BITS;
    return round_shift(x, s) * ((int64_t)1 << s);
}

static int64_t scale_product(int64_t x, int64_t mult) {
    return round_sig(round_sig(x) * mult);
}

/* Ties-to-even rounding of a / 2**s for an unsigned a (s < 64); rounding is symmetric, so signs go around it. */
static uint64_t round_shift_u(uint64_t a, unsigned s) {
    if (s == 0)
        return a;
    uint64_t q = a >> s, rem = a & (((uint64_t)1 << s) - 1), half = (uint64_t)1 << (s - 1);
    return q + (rem > half || (rem == half && (q & 1)));
}

/* EPILOGUE's rnd(scale_product(v, mult), shift) for int32 v and mult, saturated to +-2**10 (every use clamps
 * the result, plus a zero point, to int8). Faster than the 64-bit definition on a 32-bit CPU, and equal to it
 * wherever it is not saturated: round_sig(v) is v with at most 8 low bits rounded off; the product is one
 * mul/mulh pair; round_sig of it is M * 2**t with M < 2**25; and rounding M * 2**t by a further shift s is
 * M's own rounding by s - t (or a left shift), in 32 bits. */
static int32_t requantize32(int32_t v, int32_t mult, unsigned shift) {
    enum { SAT = 1 << 10 };
    uint32_t a = v < 0 ? 0u - (uint32_t)v : (uint32_t)v;
    int64_t rv = v;
    if (a >> SIG_BITS) {
        unsigned s = bit_length(a) - SIG_BITS;
        rv = (int64_t)(v < 0 ? -1 : 1) * (int64_t)round_shift_u(a, s) * ((int64_t)1 << s);
    }
    int64_t p = rv >= INT32_MIN && rv <= INT32_MAX ? (int64_t)(int32_t)rv * (int64_t)mult : rv * (int64_t)mult;
    int neg = p < 0;
    uint64_t mag = neg ? (uint64_t)(-p) : (uint64_t)p;
    unsigned b = bit_length(mag), t = b > SIG_BITS ? b - SIG_BITS : 0;
    uint32_t m = (uint32_t)round_shift_u(mag, t);          /* < 2**25 */
    shift &= 63;
    if (shift > MAX_SHIFT)
        shift = MAX_SHIFT;
    uint32_t r;
    if (shift <= t)
        r = t - shift >= 10 ? (m ? SAT : 0) : m >= (SAT >> (t - shift)) ? SAT : m << (t - shift);
    else
        r = shift - t >= 32 ? 0 : (uint32_t)round_shift_u(m, shift - t);
    if (r > SAT)
        r = SAT;
    return neg ? -(int32_t)r : (int32_t)r;
}

static int32_t clamp(int64_t v, int64_t lo, int64_t hi) {
    if (v < lo) v = lo;
    if (v > hi) v = hi;
    return (int32_t)v;
}

#ifndef SEQ_TARGET
/* The tests' way to requantize32 over arrays. */
void seq_requantize(const int32_t *v, const int32_t *mult, const uint32_t *shift, int32_t *out, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        out[i] = requantize32(v[i], mult[i], shift[i]);
}
#endif

/* ---- state --------------------------------------------------------------------------------------- */

typedef struct {
    uint32_t pc;
    uint32_t w[8];
} entry_t;

typedef struct {
    entry_t q[NUNITS][QUEUE_DEPTH];
    unsigned head[NUNITS], count[NUNITS];
    unsigned tokens[NUNITS * NUNITS];
    uint32_t pc;      /* the instruction executing, for errors */
} run_t;

static run_t R;

/* Buffers: word-addressed arrays of bytes. They keep their contents between runs, as the NPU's do. */
#define ACT_WB  LANES
#define WGT_WB  (ROWS * LANES * WEIGHT_BITS / 8)
#define ACC_WB  (ROWS * 4)
#define PRM_WB  (ROWS * 12)

static NOINIT int8_t act[ABUF_WORDS * ACT_WB];
static NOINIT uint8_t wgt[WBUF_WORDS * WGT_WB];
static NOINIT int32_t accb[ACCBUF_WORDS * ROWS];
static NOINIT int32_t prm[PBUF_WORDS * ROWS * 3];
/* A copy of ACT words that an instruction reads after writing over them (overlapping POOL or residual). */
static NOINIT int8_t snap[ABUF_WORDS * ACT_WB];

static const uint32_t BUF_WORDS[4] = {ABUF_WORDS, WBUF_WORDS, ACCBUF_WORDS, PBUF_WORDS};
static const uint32_t BUF_WB[4] = {ACT_WB, WGT_WB, ACC_WB, PRM_WB};

static uint8_t *buf_bytes(unsigned b) {
    switch (b) {
    case BUF_ACT: return (uint8_t *)act;
    case BUF_WGT: return wgt;
    case BUF_ACC: return (uint8_t *)accb;
    default: return (uint8_t *)prm;
    }
}

/* Zeroed buffers, as a new NPU's (the tests start every emulator comparison from here). */
void seq_clear(void) {
    for (uint32_t i = 0; i < sizeof act; i++) act[i] = 0;
    for (uint32_t i = 0; i < sizeof wgt; i++) wgt[i] = 0;
    for (uint32_t i = 0; i < ACCBUF_WORDS * ROWS; i++) accb[i] = 0;
    for (uint32_t i = 0; i < PBUF_WORDS * ROWS * 3; i++) prm[i] = 0;
}

#ifndef SEQ_TARGET
/* The tests' way into the buffers (the emulator's Emulator.buffers). */
void *seq_buffer(unsigned b) {
    return buf_bytes(b);
}
#endif

static void fail(unsigned code, uint32_t pc) {
    plat_error(code, pc);   /* does not return */
}

/* The emulator's _span / _buf_index: words [lo, hi] of buffer b (hi >= lo) must exist. */
static void check_words(unsigned b, uint64_t hi) {
    if (hi >= BUF_WORDS[b])
        fail(ERR_BUFFER_RANGE, R.pc);
}

/* ---- LOAD / STORE ----------------------------------------------------------------------------- */

typedef struct {
    unsigned buf;
    uint32_t dram_addr, dram_stride, buf_addr, buf_stride, rows, cols;
} dma_t;

static void dma_fields(const uint32_t *w, dma_t *d) {
    d->buf = F(w, LOAD_buf);
    d->dram_addr = F(w, LOAD_dram_addr);
    d->dram_stride = F(w, LOAD_dram_stride);
    d->buf_addr = F(w, LOAD_buf_addr);
    d->buf_stride = F(w, LOAD_buf_stride);
    d->rows = F(w, LOAD_rows);
    d->cols = F(w, LOAD_cols);
}

/* a % b without a divide instruction (the CPU has none); b > 0. */
static uint32_t umod(uint32_t a, uint32_t b) {
    if (!(b & (b - 1)))
        return a & (b - 1);
    uint64_t r = a, d = (uint64_t)b << 32;
    for (int i = 0; i <= 32; i++, d >>= 1)
        if (r >= d)
            r -= d;
    return (uint32_t)r;
}

static void dma_check(const dma_t *d) {
    uint32_t wb = BUF_WB[d->buf];
    uint32_t align = wb < BUS_BYTES ? wb : BUS_BYTES;
    if (umod(d->dram_addr, align) || (d->rows > 1 && umod(d->dram_stride, align)))
        fail(ERR_MISALIGNED, R.pc);
    uint64_t end = (uint64_t)d->dram_addr + (uint64_t)(d->rows - 1) * d->dram_stride + (uint64_t)d->cols * wb;
    if (end > DRAM_BYTES)
        fail(ERR_DRAM_RANGE, R.pc);
    check_words(d->buf, (uint64_t)d->buf_addr + (uint64_t)(d->rows - 1) * d->buf_stride + d->cols - 1);
}

static void exec_load(const uint32_t *w) {
    dma_t d;
    dma_fields(w, &d);
    if (d.buf == BUF_ACC)
        fail(ERR_BAD_FIELD, R.pc);
    dma_check(&d);
    uint32_t wb = BUF_WB[d.buf];
    uint8_t *base = buf_bytes(d.buf);
    /* Rows in order, so overlapping buffer rows end with the last one (numpy's order in the emulator). */
    for (uint32_t r = 0; r < d.rows; r++) {
        uint32_t src = d.dram_addr + r * d.dram_stride;
        uint8_t *dst = base + (d.buf_addr + r * d.buf_stride) * wb;
        plat_dram_read(dst, src, d.cols * wb);
        plat_progress();
    }
}

static void exec_store(const uint32_t *w) {
    dma_t d;
    dma_fields(w, &d);
    if (d.buf != BUF_ACT)
        fail(ERR_BAD_FIELD, R.pc);
    dma_check(&d);
    for (uint32_t r = 0; r < d.rows; r++) {
        const uint8_t *src = (const uint8_t *)act + (d.buf_addr + r * d.buf_stride) * ACT_WB;
        plat_dram_write(d.dram_addr + r * d.dram_stride, src, d.cols * ACT_WB);
        plat_progress();
    }
}

/* ---- CONV ------------------------------------------------------------------------------------------ */

#ifndef dot4
/* Σ of the four products of the int8 bytes of x and y (the target may do this in one instruction). */
__attribute__((unused)) static inline int32_t dot4(uint32_t x, uint32_t y) {
    int32_t s = (int32_t)(int8_t)x * (int32_t)(int8_t)y;
    s += ((int32_t)(x << 16) >> 24) * ((int32_t)(y << 16) >> 24);
    s += ((int32_t)(x << 8) >> 24) * ((int32_t)(y << 8) >> 24);
    s += ((int32_t)x >> 24) * ((int32_t)y >> 24);
    return s;
}
#endif

__attribute__((unused)) static inline int32_t weight(const uint8_t *word, unsigned i) {
#if WEIGHT_BITS == 8
    return (int8_t)word[i];
#else
    unsigned bit = i * WEIGHT_BITS;
    int32_t v = (word[bit >> 3] >> (bit & 7)) & ((1 << WEIGHT_BITS) - 1);
    return v >= (1 << (WEIGHT_BITS - 1)) ? v - (1 << WEIGHT_BITS) : v;
#endif
}

/* The product of one weight word (ROWS x LANES) by one activation word, added to sum (wrapping). */
static inline void mac_block(int32_t *sum, const int8_t *a, const uint8_t *wd) {
#if WEIGHT_BITS == 8 && LANES % 4 == 0
    /* Four int8 lanes a 32-bit load (words are 4-byte aligned in RAM): fewer loads and no byte indexing. */
    const uint32_t *a32 = (const uint32_t *)a;
#pragma clang loop unroll(full)
    for (unsigned mm = 0; mm < ROWS; mm++) {
        const uint32_t *w32 = (const uint32_t *)(wd + mm * LANES);
        uint32_t s = (uint32_t)sum[mm];
        for (unsigned n = 0; n < LANES / 4; n++)
            s += (uint32_t)dot4(w32[n], a32[n]);
        sum[mm] = (int32_t)s;
    }
#else
    for (unsigned mm = 0; mm < ROWS; mm++) {
        uint32_t s = (uint32_t)sum[mm];
        for (unsigned n = 0; n < LANES; n++)
            s += (uint32_t)(weight(wd, mm * LANES + n) * (int32_t)a[n]);
        sum[mm] = (int32_t)s;
    }
#endif
}

static void exec_conv(const uint32_t *w) {
    uint32_t in_addr = F(w, CONV_in_addr), in_h = F(w, CONV_in_h), in_w = F(w, CONV_in_w);
    uint32_t in_cb = F(w, CONV_in_cb), out_h = F(w, CONV_out_h), out_w = F(w, CONV_out_w);
    uint32_t k_h = F(w, CONV_k_h), k_w = F(w, CONV_k_w), sh = F(w, CONV_stride_h), sw = F(w, CONV_stride_w);
    uint32_t dh = F(w, CONV_dil_h), dw = F(w, CONV_dil_w), pad_t = F(w, CONV_pad_t), pad_l = F(w, CONV_pad_l);
    int32_t pad_value = FS(w, CONV_pad_value);
    uint32_t w_addr = F(w, CONV_w_addr), acc_addr = F(w, CONV_acc_addr), ob = F(w, CONV_ob_count);
    uint32_t accumulate = F(w, CONV_accumulate);
    uint32_t taps = k_h * k_w, P = out_h * out_w;
    check_words(BUF_ACT, (uint64_t)in_addr + (uint64_t)in_h * in_w * in_cb - 1);
    check_words(BUF_WGT, (uint64_t)w_addr + (uint64_t)ob * taps * in_cb - 1);
    check_words(BUF_ACC, (uint64_t)acc_addr + (uint64_t)ob * P - 1);
    int8_t padw[LANES];
    for (unsigned n = 0; n < LANES; n++)
        padw[n] = (int8_t)pad_value;
    for (uint32_t b = 0; b < ob; b++) {
        for (uint32_t y = 0; y < out_h; y++) {
            for (uint32_t x = 0; x < out_w; x++) {
                int32_t sum[ROWS];
                for (unsigned mm = 0; mm < ROWS; mm++)
                    sum[mm] = 0;
                for (uint32_t ky = 0; ky < k_h; ky++) {
                    int32_t iy = (int32_t)(y * sh + ky * dh) - (int32_t)pad_t;
                    for (uint32_t kx = 0; kx < k_w; kx++) {
                        int32_t ix = (int32_t)(x * sw + kx * dw) - (int32_t)pad_l;
                        int inside = iy >= 0 && iy < (int32_t)in_h && ix >= 0 && ix < (int32_t)in_w;
                        const uint8_t *wrow = wgt + (w_addr + ((b * k_h + ky) * k_w + kx) * in_cb) * WGT_WB;
                        const int8_t *arow = inside ? act + (in_addr + ((uint32_t)iy * in_w + (uint32_t)ix) * in_cb) * ACT_WB
                                                    : padw;
                        for (uint32_t c = 0; c < in_cb; c++) {
                            const int8_t *a = inside ? arow + c * ACT_WB : padw;
                            const uint8_t *wd = wrow + c * WGT_WB;
                            mac_block(sum, a, wd);
                            plat_progress();   /* a pixel can take millions of cycles: the watchdog sees each block */
                        }
                    }
                }
                int32_t *acc = accb + (acc_addr + b * P + y * out_w + x) * ROWS;
                for (unsigned mm = 0; mm < ROWS; mm++)
                    acc[mm] = accumulate ? (int32_t)((uint32_t)acc[mm] + (uint32_t)sum[mm]) : sum[mm];
                plat_progress();
            }
        }
    }
    plat_macs((uint64_t)P * taps * in_cb * ob);
}

/* ---- EPILOGUE ------------------------------------------------------------------------------------ */

#define WPB (ROWS / LANES)   /* ACT words per row block */

static void exec_epilogue(const uint32_t *w) {
    uint32_t acc_addr = F(w, EPILOGUE_acc_addr), P = F(w, EPILOGUE_pixels), ob = F(w, EPILOGUE_ob_count);
    uint32_t param_addr = F(w, EPILOGUE_param_addr), out_addr = F(w, EPILOGUE_out_addr);
    uint32_t out_stride = F(w, EPILOGUE_out_stride);
    int32_t zp_out = FS(w, EPILOGUE_zp_out), lo = FS(w, EPILOGUE_out_min), hi = FS(w, EPILOGUE_out_max);
    uint32_t residual = F(w, EPILOGUE_residual), res_addr = F(w, EPILOGUE_res_addr);
    uint32_t res_stride = F(w, EPILOGUE_res_stride);
    int32_t zp_mid = FS(w, EPILOGUE_zp_mid), zp_res = FS(w, EPILOGUE_zp_res);
    int64_t mult_a = F(w, EPILOGUE_res_mult_a), mult_b = F(w, EPILOGUE_res_mult_b);
    unsigned res_shift = F(w, EPILOGUE_res_shift);
    uint32_t dense = ob * WPB;
    check_words(BUF_ACC, (uint64_t)acc_addr + (uint64_t)ob * P - 1);
    check_words(BUF_PARAM, (uint64_t)param_addr + ob - 1);
    check_words(BUF_ACT, (uint64_t)out_addr + (uint64_t)(P - 1) * out_stride + dense - 1);
    const int8_t *res = act;
    if (residual) {
        check_words(BUF_ACT, (uint64_t)res_addr + (uint64_t)(P - 1) * res_stride + dense - 1);
        /* The emulator writes output pixels in place while it reads the residual when outputs do not
         * overlap each other (out_stride >= dense); otherwise it reads every residual value first. */
        if (out_stride < dense) {
            for (uint32_t i = 0; i < ABUF_WORDS * ACT_WB; i++)
                snap[i] = act[i];
            res = snap;
        }
    }
    for (uint32_t b = 0; b < ob; b++) {
        const int32_t *pw = prm + (param_addr + b) * ROWS * 3;
        for (uint32_t p = 0; p < P; p++) {
            const int32_t *acc = accb + (acc_addr + b * P + p) * ROWS;
            int8_t *out = act + (out_addr + p * out_stride + b * WPB) * ACT_WB;
            const int8_t *r = res + (res_addr + p * res_stride + b * WPB) * ACT_WB;
            for (unsigned c = 0; c < ROWS; c++) {
                int32_t bias = pw[c * 3], mult = pw[c * 3 + 1];
                unsigned shift = (unsigned)pw[c * 3 + 2];
                int32_t v = (int32_t)((uint32_t)acc[c] + (uint32_t)bias);
                int32_t q = requantize32(v, mult, shift);
                int32_t y;
                if (!residual) {
                    y = clamp(q + zp_out, lo, hi);
                } else {
                    int32_t a = clamp(q + zp_mid, -128, 127);
                    /* Operands of at most 9 and 31 bits: each product one mul/mulh pair. */
                    int64_t s = (int64_t)(a - zp_mid) * (int32_t)mult_a + (int64_t)(r[c] - zp_res) * (int32_t)mult_b;
                    y = clamp(round_shift(s, res_shift) + zp_out, lo, hi);
                }
                out[c] = (int8_t)y;
            }
            plat_progress();
        }
    }
}

/* ---- POOL ------------------------------------------------------------------------------------------- */

#if POOL_FL32
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static uint64_t abs64(int64_t a) { return a < 0 ? (uint64_t)(-a) : (uint64_t)a; }

/* tessera.numerics.pool_avg_fl32 for one window: onnxruntime's float32 average of the taps k (x - zp_in, in
 * row-major window order) in one scale of significand m, 2**n taps; with_zp: its fused form, zp the output
 * zero point as onnxruntime holds it. The caller adds zp_out. */
static int64_t pool_avg_fl32(const int32_t *k, unsigned taps, int64_t m, unsigned n, int with_zp, int64_t zp) {
    n &= 63;
    if (n > FL32_MAX_N)
        n = FL32_MAX_N;
    int64_t s = round_sig(k[0] * m), big_k = k[0];
    for (unsigned t = 1; t < taps; t++) {
        s = round_sig(s + round_sig(k[t] * m));
        big_k += k[t];
    }
    int64_t e = s - big_k * m;
    uint64_t mag_e = abs64(e), mag_k = abs64(big_k);
    int64_t half = ((int64_t)1 << n) >> 1;
    int tie = half != 0 && (big_k & (((int64_t)1 << n) - 1)) == half;
    int b_k = (int)bit_length(mag_k);
    /* The quotient's spacing halves just below a power of two: one more bit when it lands there. */
    int in1 = (mag_k & (mag_k - 1)) == 0 && ((e < 0) != (big_k < 0));
    /* It keeps E when |E| / m exceeds half its spacing (shift counts are >= 0 for |k| < 2**9, 256 taps). */
    int keep1 = (min64((int64_t)mag_e, (int64_t)1 << 24) << (25 - b_k + in1)) > m;
    int64_t moved = (big_k >> n) + (e > 0);
    if (!with_zp)
        return (tie && keep1 && e != 0) ? moved : round_shift(big_k, n);
    int64_t bq = big_k + zp * ((int64_t)1 << n);
    uint64_t mag_b = abs64(bq);
    int b_b = (int)bit_length(mag_b);
    int in2 = mag_b == (uint64_t)half && ((e < 0) != (bq < 0));
    int t = b_b - b_k - 1 - in2 + in1;
    int64_t lhs = min64((int64_t)mag_e, (int64_t)1 << 32) << (25 - b_b + in2);
    int64_t d = lhs - m;
    int64_t scaled = min64(d > 0 ? d : 0, (int64_t)1 << 31) << (t + 1 > 0 ? t + 1 : 0);
    int keep2 = d > 0 && (scaled > m || (scaled == m && t == 0));
    int keep = t < 0 ? keep1 : keep2;
    return (tie && keep && e != 0) ? moved : round_shift(bq, n) - zp;
}
#endif

static void exec_pool(const uint32_t *w) {
    unsigned avg = F(w, POOL_mode);
    uint32_t in_addr = F(w, POOL_in_addr), in_h = F(w, POOL_in_h), in_w = F(w, POOL_in_w), cb = F(w, POOL_cb);
    uint32_t out_addr = F(w, POOL_out_addr), out_h = F(w, POOL_out_h), out_w = F(w, POOL_out_w);
    uint32_t k_h = F(w, POOL_k_h), k_w = F(w, POOL_k_w), sh = F(w, POOL_stride_h), sw = F(w, POOL_stride_w);
    uint32_t pad_t = F(w, POOL_pad_t), pad_l = F(w, POOL_pad_l);
    int32_t zp_in = FS(w, POOL_zp_in), zp_out = FS(w, POOL_zp_out);
    int64_t mult = F(w, POOL_mult);
    unsigned shift = F(w, POOL_shift);
    int fl32 = avg && F(w, POOL_fl32);
    if (fl32 && !POOL_FL32)
        fail(ERR_BAD_FIELD, R.pc);
    uint32_t in_words = in_h * in_w * cb, out_words = out_h * out_w * cb;
    check_words(BUF_ACT, (uint64_t)in_addr + in_words - 1);
    check_words(BUF_ACT, (uint64_t)out_addr + out_words - 1);
    /* The emulator reads the whole input tile before it writes an output: an overlapping output tile
     * must not change the input this instruction still reads. */
    const int8_t *src = act + in_addr * ACT_WB;
    if (out_addr < in_addr + in_words && in_addr < out_addr + out_words) {
        for (uint32_t i = 0; i < in_words * ACT_WB; i++)
            snap[i] = src[i];
        src = snap;
    }
    uint32_t taps = k_h * k_w, cw = cb * LANES;
    for (uint32_t y = 0; y < out_h; y++) {
        for (uint32_t x = 0; x < out_w; x++) {
            int8_t *out = act + out_addr * ACT_WB + (y * out_w + x) * cw;
            for (uint32_t ch = 0; ch < cw; ch++) {
                if (ch % LANES == 0)
                    plat_progress();
#if POOL_FL32
                if (fl32) {
                    /* Every tap of the window in order, a pad as 0 (x - zp_in of a pad reading zp_in). */
                    int32_t k[256];
                    unsigned nt = 0;
                    for (uint32_t ky = 0; ky < k_h; ky++) {
                        int32_t iy = (int32_t)(y * sh + ky) - (int32_t)pad_t;
                        for (uint32_t kx = 0; kx < k_w; kx++, nt++) {
                            int32_t ix = (int32_t)(x * sw + kx) - (int32_t)pad_l;
                            int inside = iy >= 0 && iy < (int32_t)in_h && ix >= 0 && ix < (int32_t)in_w;
                            k[nt] = inside ? src[((uint32_t)iy * in_w + (uint32_t)ix) * cw + ch] - zp_in : 0;
                        }
                    }
                    int64_t q = pool_avg_fl32(k, nt, mult, shift, (int)F(w, POOL_fl32_zp), FS(w, POOL_zp_ort));
                    out[ch] = (int8_t)clamp(q + zp_out, -128, 127);
                    continue;
                }
#endif
                int32_t acc = avg ? 0 : -128;
                for (uint32_t ky = 0; ky < k_h; ky++) {
                    int32_t iy = (int32_t)(y * sh + ky) - (int32_t)pad_t;
                    for (uint32_t kx = 0; kx < k_w; kx++) {
                        int32_t ix = (int32_t)(x * sw + kx) - (int32_t)pad_l;
                        int32_t v;
                        if (iy >= 0 && iy < (int32_t)in_h && ix >= 0 && ix < (int32_t)in_w)
                            v = src[((uint32_t)iy * in_w + (uint32_t)ix) * cw + ch];
                        else
                            v = avg ? zp_in : -128;   /* a pad adds 0 to Σ(x - zp_in); never beats a tap */
                        if (avg)
                            acc += v;
                        else if (v > acc)
                            acc = v;
                    }
                }
                if (avg) {
                    int64_t total = (int64_t)acc - (int64_t)zp_in * taps;
                    acc = clamp(round_shift(scale_product(total, mult), shift) + zp_out, -128, 127);
                }
                out[ch] = (int8_t)acc;
            }
            plat_progress();
        }
    }
}

/* ---- fetch, dispatch, run --------------------------------------------------------------------- */

/* Decodes the word at pc (as tessera.isa.decode and Emulator._fetch): its unit, or -1 for END. */
static int decode(uint32_t pc, const uint32_t *w) {
    unsigned op = w[0] & 15;
    if (op < 1 || op > 7)
        fail(ERR_ILLEGAL_OPCODE, pc);
    const uint16_t *spec = FORMAT_SPECS[op];
    unsigned used = spec[0], nz = spec[1];
    for (unsigned i = 0; i < nz; i++) {
        if (field(w, spec[2 + 2 * i], spec[3 + 2 * i], 0) == 0)
            fail(ERR_BAD_FIELD, pc);
    }
    for (unsigned bit = used; bit < 256; bit += 32) {
        unsigned width = 256 - bit < 32 ? 256 - bit : 32;
        if (field(w, bit, width, 0))
            fail(ERR_BAD_FIELD, pc);
    }
    if (op == OP_END)
        return -1;
    unsigned unit = op == OP_SYNC ? F(w, SYNC_unit) : OPCODE_UNIT[op];
    if (((F(w, HDR_wait) | F(w, HDR_signal)) >> unit) & 1)
        fail(ERR_BAD_FIELD, pc);
    return (int)unit;
}

static void execute(const entry_t *e) {
    R.pc = e->pc;
    plat_pc(e->pc);
    switch (e->w[0] & 15) {
    case OP_LOAD: exec_load(e->w); break;
    case OP_STORE: exec_store(e->w); break;
    case OP_CONV: exec_conv(e->w); break;
    case OP_EPILOGUE: exec_epilogue(e->w); break;
    case OP_POOL: exec_pool(e->w); break;
    default: break;   /* SYNC */
    }
}

void seq_run(uint32_t prog_addr) {
    for (unsigned u = 0; u < NUNITS; u++)
        R.head[u] = R.count[u] = 0;
    for (unsigned t = 0; t < NUNITS * NUNITS; t++)
        R.tokens[t] = 0;
    uint32_t pc = prog_addr;
    int fetching = 1;
    uint32_t w[8];
    for (;;) {
        while (fetching) {
            if ((uint64_t)pc + INSTR_BYTES > DRAM_BYTES)
                fail(ERR_DRAM_RANGE, pc);
            plat_dram_read((uint8_t *)w, pc, INSTR_BYTES);
            int u = decode(pc, w);
            if (u < 0) {
                fetching = 0;
                break;
            }
            if (R.count[u] >= QUEUE_DEPTH)
                break;
            unsigned slot = R.head[u] + R.count[u];
            entry_t *e = &R.q[u][slot >= QUEUE_DEPTH ? slot - QUEUE_DEPTH : slot];
            e->pc = pc;
            for (unsigned i = 0; i < 8; i++)
                e->w[i] = w[i];
            R.count[u]++;
            pc += INSTR_BYTES;
        }
        /* Among the heads that can start, the oldest goes first. */
        int best = -1;
        uint32_t bpc = 0;
        for (unsigned u = 0; u < NUNITS; u++) {
            if (!R.count[u])
                continue;
            const entry_t *e = &R.q[u][R.head[u]];
            if (best >= 0 && e->pc > bpc)
                continue;
            unsigned waits = F(e->w, HDR_wait), sigs = F(e->w, HDR_signal), ok = 1;
            for (unsigned s = 0; s < NUNITS; s++)
                if ((waits >> s & 1) && !R.tokens[s * NUNITS + u])
                    ok = 0;
            for (unsigned d = 0; d < NUNITS; d++)
                if ((sigs >> d & 1) && R.tokens[u * NUNITS + d] >= TOKEN_DEPTH)
                    ok = 0;
            if (ok) {
                best = (int)u;
                bpc = e->pc;
            }
        }
        if (best < 0) {
            int any = 0;
            uint32_t hpc = pc;
            for (unsigned u = 0; u < NUNITS; u++) {
                if (R.count[u]) {
                    uint32_t p = R.q[u][R.head[u]].pc;
                    if (!any || p < hpc)
                        hpc = p;
                    any = 1;
                }
            }
            if (!fetching && !any)
                break;
            fail(ERR_DEADLOCK, hpc);
        }
        entry_t *e = &R.q[best][R.head[best]];
        R.head[best] = R.head[best] + 1 == QUEUE_DEPTH ? 0 : R.head[best] + 1;
        R.count[best]--;
        unsigned waits = F(e->w, HDR_wait), sigs = F(e->w, HDR_signal);
        for (unsigned s = 0; s < NUNITS; s++)
            if (waits >> s & 1)
                R.tokens[s * NUNITS + best]--;
        execute(e);
        for (unsigned d = 0; d < NUNITS; d++)
            if (sigs >> d & 1)
                R.tokens[best * NUNITS + d]++;
    }
    plat_done();
}

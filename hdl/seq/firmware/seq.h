/* The sequential NPU's firmware: what seq.c needs from its platform (target.c on the CPU, host.c in
 * the tests). cfg.h is generated per NpuConfig by hdl/seq/firmware.py. */
#ifndef TESSERA_SEQ_H
#define TESSERA_SEQ_H

#include <stdint.h>

#include "cfg.h"

#ifdef SEQ_TARGET
#define NOINIT __attribute__((section(".noinit")))
#else
#define NOINIT
#endif

/* Stops the run with an ErrorCode at the instruction at pc; never returns. */
void plat_error(unsigned code, uint32_t pc) __attribute__((noreturn));
/* Copies n bytes between external memory at addr and a buffer (any alignment). */
void plat_dram_read(uint8_t *dst, uint32_t addr, uint32_t n);
void plat_dram_write(uint32_t addr, const uint8_t *src, uint32_t n);
/* The instruction at pc starts (the watchdog's oldest pc). */
void plat_pc(uint32_t pc);
/* Something moved (the watchdog counts cycles between these). */
#ifdef SEQ_TARGET
#define IO ((volatile uint32_t *)MAP_IO)
static inline void plat_progress(void) { IO[IO_PROGRESS] = 1; }   /* inline: CONV calls it every block */
#else
void plat_progress(void);
#endif
/* A CONV did this many ROWS x LANES blocks of MACs (the MACS CSR counts ROWS * LANES per block). */
void plat_macs(uint64_t blocks);
/* The program ended and every unit drained. */
void plat_done(void);

#define SEQ_STR_(x) #x
#define SEQ_STR(x) SEQ_STR_(x)

#ifdef SEQ_TARGET
/* The core's co-processor instruction (hdl/seq/core.py Dot4): the sum of the four int8 products. */
static inline int32_t dot4_insn(uint32_t x, uint32_t y) {
    int32_t r;
    __asm__(".insn r " SEQ_STR(DOT4_OPCODE) ", 0, 0, %0, %1, %2" : "=r"(r) : "r"(x), "r"(y));
    return r;
}
#define dot4 dot4_insn
#endif

void seq_run(uint32_t prog_addr);
void seq_clear(void);

#endif

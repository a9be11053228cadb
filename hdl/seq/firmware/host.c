/* The firmware on the host, for tests: external memory is a caller's array, errors return. */
#include <setjmp.h>
#include <string.h>

#include "seq.h"

static uint8_t *dram;
static jmp_buf stop;
static unsigned err_code;
static uint32_t err_pc;
static uint64_t mac_blocks;

void plat_error(unsigned code, uint32_t pc) {
    err_code = code;
    err_pc = pc;
    longjmp(stop, 1);
}

void plat_dram_read(uint8_t *dst, uint32_t addr, uint32_t n) { memcpy(dst, dram + addr, n); }
void plat_dram_write(uint32_t addr, const uint8_t *src, uint32_t n) { memcpy(dram + addr, src, n); }
void plat_pc(uint32_t pc) { (void)pc; }
void plat_progress(void) {}
void plat_macs(uint64_t blocks) { mac_blocks += blocks; }
void plat_done(void) {}

/* Runs from prog_addr on `mem` (DRAM_BYTES bytes). Returns the ErrorCode (0: done); out[0] = error pc,
 * out[1] = MAC blocks. */
unsigned seq_host_run(uint8_t *mem, uint32_t prog_addr, uint64_t *out) {
    dram = mem;
    err_code = 0;
    err_pc = 0;
    mac_blocks = 0;
    if (!setjmp(stop))
        seq_run(prog_addr);
    out[0] = err_pc;
    out[1] = mac_blocks;
    return err_code;
}

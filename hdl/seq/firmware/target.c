/* The firmware on the CPU of hdl/seq/core.py: external memory and the core's registers are mapped
 * into its address space (MAP_DRAM, MAP_IO and the IO_ register offsets in cfg.h). */
#include "seq.h"

void plat_error(unsigned code, uint32_t pc) {
    IO[IO_ERR_PC] = pc;
    IO[IO_ERR_CODE] = code;
    for (;;) {}
}

void plat_dram_read(uint8_t *dst, uint32_t addr, uint32_t n) {
    if (!((addr | (uint32_t)dst | n) & 3)) {
        /* One bus beat per word. */
        const volatile uint32_t *s = (const volatile uint32_t *)(MAP_DRAM + addr);
        uint32_t *d = (uint32_t *)dst;
        for (uint32_t i = 0; i < n / 4; i++) {
            d[i] = s[i];
            if (!(i & 63))
                plat_progress();
        }
        return;
    }
    const volatile uint8_t *s = (const volatile uint8_t *)(MAP_DRAM + addr);
    for (uint32_t i = 0; i < n; i++) {
        dst[i] = s[i];
        if (!(i & 255))
            plat_progress();
    }
}

void plat_dram_write(uint32_t addr, const uint8_t *src, uint32_t n) {
    if (!((addr | (uint32_t)src | n) & 3)) {
        volatile uint32_t *d = (volatile uint32_t *)(MAP_DRAM + addr);
        const uint32_t *s = (const uint32_t *)src;
        for (uint32_t i = 0; i < n / 4; i++) {
            d[i] = s[i];
            if (!(i & 63))
                plat_progress();
        }
        return;
    }
    volatile uint8_t *d = (volatile uint8_t *)(MAP_DRAM + addr);
    for (uint32_t i = 0; i < n; i++) {
        d[i] = src[i];
        if (!(i & 255))
            plat_progress();
    }
}

void plat_pc(uint32_t pc) { IO[IO_PC] = pc; }

void plat_macs(uint64_t blocks) {
    while (blocks > 0xFFFFFFFFu) {
        IO[IO_MACS] = 0xFFFFFFFFu;
        blocks -= 0xFFFFFFFFu;
    }
    IO[IO_MACS] = (uint32_t)blocks;
}

void plat_done(void) { IO[IO_DONE] = 1; }

int main(void) {
    seq_run(IO[IO_PROG_ADDR]);
    for (;;) {}
}

/* Reset entry of the sequential NPU's CPU: a stack at the top of RAM, .bss zeroed (the buffers in
 * .noinit keep their contents between runs), then main(). */
    .section .text.start
    .globl _start
_start:
    la sp, __stack_top
    la t0, __bss_start
    la t1, __bss_end
1:  bgeu t0, t1, 2f
    sw zero, 0(t0)
    addi t0, t0, 4
    j 1b
2:  call main
3:  j 3b

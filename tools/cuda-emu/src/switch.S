// cuda-emu: the fiber context switch (x86-64 System V).
//
// void emu_switch(void** save_sp, void* new_sp)
//   Saves the callee-saved registers, MXCSR and the x87 control word on the current stack,
//   stores the stack pointer in *save_sp, then restores the same set from new_sp and returns
//   into whatever that stack was doing. A new fiber's stack is prepared by fiber_init in
//   sched.cpp so that the first switch into it "returns" into emu_fiber_start.
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch

// First code a fiber runs: the stack is 16-byte aligned here, so the call below gives
// emu_fiber_main the alignment the ABI promises. emu_fiber_main never returns.
    .globl emu_fiber_start
    .type emu_fiber_start, @function
emu_fiber_start:
    call emu_fiber_main@PLT
    ud2
    .size emu_fiber_start, .-emu_fiber_start

    .section .note.GNU-stack,"",@progbits

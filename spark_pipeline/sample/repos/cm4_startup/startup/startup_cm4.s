/*
 * startup_cm4.s - reset and exception entry for a Cortex-M4 part.
 * Builds the vector table, copies .data from flash, zeroes .bss, then calls
 * system_init() and main().
 */
    .syntax unified
    .cpu cortex-m4
    .fpu fpv4-sp-d16
    .thumb

    .global g_vector_table
    .global Reset_Handler
    .global Default_Handler

    .word _sidata
    .word _sdata
    .word _edata
    .word _sbss
    .word _ebss

    .section .text.Reset_Handler, "ax", %progbits
    .type Reset_Handler, %function
Reset_Handler:
    ldr   sp, =_estack          /* the core loads SP from entry 0; reload it for debuggers */
    /* copy initialised data from flash to SRAM */
    ldr   r0, =_sdata
    ldr   r1, =_edata
    ldr   r2, =_sidata
copy_data:
    cmp   r0, r1
    bcs   zero_bss_start
    ldr   r3, [r2], #4
    str   r3, [r0], #4
    b     copy_data
zero_bss_start:
    ldr   r0, =_sbss
    ldr   r1, =_ebss
    movs  r3, #0
zero_bss:
    cmp   r0, r1
    bcs   call_init
    str   r3, [r0], #4
    b     zero_bss
call_init:
    bl    system_init
    bl    main
hang:
    b     hang
    .size Reset_Handler, .-Reset_Handler

    .section .text.Default_Handler, "ax", %progbits
Default_Handler:
    b     Default_Handler
    .size Default_Handler, .-Default_Handler

    .section .isr_vector, "a", %progbits
    .type g_vector_table, %object
g_vector_table:
    .word _estack               /* 0: initial main stack pointer */
    .word Reset_Handler         /* 1: reset */
    .word NMI_Handler           /* 2: non-maskable interrupt */
    .word HardFault_Handler     /* 3: hard fault */
    .word MemManage_Handler     /* 4: memory management fault */
    .word BusFault_Handler      /* 5: bus fault */
    .word UsageFault_Handler    /* 6: usage fault */
    .word 0, 0, 0, 0            /* 7-10: reserved */
    .word SVC_Handler           /* 11: supervisor call */
    .word DebugMon_Handler      /* 12: debug monitor */
    .word 0                     /* 13: reserved */
    .word PendSV_Handler        /* 14: pendable service request */
    .word SysTick_Handler       /* 15: system tick timer */
    .size g_vector_table, .-g_vector_table

    .weak NMI_Handler
    .thumb_set NMI_Handler, Default_Handler
    .weak HardFault_Handler
    .thumb_set HardFault_Handler, Default_Handler
    .weak MemManage_Handler
    .thumb_set MemManage_Handler, Default_Handler
    .weak BusFault_Handler
    .thumb_set BusFault_Handler, Default_Handler
    .weak UsageFault_Handler
    .thumb_set UsageFault_Handler, Default_Handler
    .weak SVC_Handler
    .thumb_set SVC_Handler, Default_Handler
    .weak DebugMon_Handler
    .thumb_set DebugMon_Handler, Default_Handler
    .weak PendSV_Handler
    .thumb_set PendSV_Handler, Default_Handler
    .weak SysTick_Handler
    .thumb_set SysTick_Handler, Default_Handler

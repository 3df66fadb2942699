/* system.c - core set-up run by Reset_Handler before main() */
#include "cm4_core.h"

extern uint32_t g_vector_table[];

void system_init(void)
{
    /* Grant full access to the FPU (coprocessors CP10 and CP11) before any float code runs. */
    SCB->CPACR |= SCB_CPACR_CP10_FULL | SCB_CPACR_CP11_FULL;
    __asm volatile ("dsb\n\tisb" ::: "memory");

    /* Point VTOR at our table; its low 7 bits must be zero (128-byte alignment). */
    SCB->VTOR = (uint32_t)g_vector_table & ~0x7FUL;

    /* Trap divide-by-zero instead of returning 0. */
    SCB->CCR |= SCB_CCR_DIV_0_TRP;
}

void systick_start(uint32_t core_hz, uint32_t tick_hz)
{
    uint32_t reload = core_hz / tick_hz - 1U;

    SysTick->CSR = 0U;
    SysTick->RVR = reload & 0x00FFFFFFUL;   /* SYST_RVR is 24 bits wide */
    SysTick->CVR = 0U;                      /* any write clears the counter and COUNTFLAG */
    SysTick->CSR = SYST_CSR_CLKSOURCE | SYST_CSR_TICKINT | SYST_CSR_ENABLE;
}

void system_reset(void)
{
    __asm volatile ("dsb" ::: "memory");
    SCB->AIRCR = SCB_AIRCR_VECTKEY | SCB_AIRCR_SYSRESETREQ;
    __asm volatile ("dsb" ::: "memory");
    for (;;) {
    }
}

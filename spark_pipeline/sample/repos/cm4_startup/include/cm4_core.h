/* cm4_core.h - Cortex-M4 system control space registers used at start-up */
#ifndef CM4_CORE_H
#define CM4_CORE_H
#include <stdint.h>

#define SCB_BASE        0xE000ED00UL
#define SYSTICK_BASE    0xE000E010UL

typedef struct {
    volatile uint32_t CPUID;   /* 0x00 CPUID base register                   */
    volatile uint32_t ICSR;    /* 0x04 interrupt control and state register  */
    volatile uint32_t VTOR;    /* 0x08 vector table offset register          */
    volatile uint32_t AIRCR;   /* 0x0C application interrupt and reset control */
    volatile uint32_t SCR;     /* 0x10 system control register               */
    volatile uint32_t CCR;     /* 0x14 configuration and control register    */
    volatile uint8_t  SHPR[12];/* 0x18 system handler priority registers     */
    volatile uint32_t SHCSR;   /* 0x24 system handler control and state      */
    uint32_t RESERVED[25];
    volatile uint32_t CPACR;   /* 0x88 coprocessor access control register   */
} SCB_Type;

typedef struct {
    volatile uint32_t CSR;     /* SYST_CSR: control and status   */
    volatile uint32_t RVR;     /* SYST_RVR: reload value         */
    volatile uint32_t CVR;     /* SYST_CVR: current value        */
    volatile uint32_t CALIB;   /* SYST_CALIB: calibration value  */
} SysTick_Type;

#define SCB      ((SCB_Type *)SCB_BASE)
#define SysTick  ((SysTick_Type *)SYSTICK_BASE)

#define SCB_CPACR_CP10_FULL   (3UL << 20)
#define SCB_CPACR_CP11_FULL   (3UL << 22)
#define SCB_AIRCR_VECTKEY     (0x05FAUL << 16)
#define SCB_AIRCR_SYSRESETREQ (1UL << 2)
#define SCB_CCR_DIV_0_TRP     (1UL << 4)
#define SCB_CCR_UNALIGN_TRP   (1UL << 3)

#define SYST_CSR_ENABLE       (1UL << 0)
#define SYST_CSR_TICKINT      (1UL << 1)
#define SYST_CSR_CLKSOURCE    (1UL << 2)
#define SYST_CSR_COUNTFLAG    (1UL << 16)

void system_init(void);
void systick_start(uint32_t core_hz, uint32_t tick_hz);
void system_reset(void);
#endif

/*
 * spk32f4.h - peripheral access layer for the SPK32F4 (a Cortex-M4 MCU with an
 * STM32F4-compatible peripheral set): memory map, register blocks and bit definitions.
 */
#ifndef SPK32F4_H
#define SPK32F4_H

#include <stdint.h>

#define __IO volatile

/* ------------------------------------------------------------------ memory map */
#define PERIPH_BASE        0x40000000UL
#define APB1PERIPH_BASE    PERIPH_BASE
#define APB2PERIPH_BASE    (PERIPH_BASE + 0x00010000UL)
#define AHB1PERIPH_BASE    (PERIPH_BASE + 0x00020000UL)

#define GPIOA_BASE         (AHB1PERIPH_BASE + 0x0000UL)
#define GPIOB_BASE         (AHB1PERIPH_BASE + 0x0400UL)
#define RCC_BASE           (AHB1PERIPH_BASE + 0x3800UL)
#define USART1_BASE        (APB2PERIPH_BASE + 0x1000UL)
#define USART2_BASE        (APB1PERIPH_BASE + 0x4400UL)

/* ------------------------------------------------------------- register blocks */
typedef struct {
    __IO uint32_t MODER;    /* 0x00 mode register                 */
    __IO uint32_t OTYPER;   /* 0x04 output type register          */
    __IO uint32_t OSPEEDR;  /* 0x08 output speed register         */
    __IO uint32_t PUPDR;    /* 0x0C pull-up/pull-down register    */
    __IO uint32_t IDR;      /* 0x10 input data register           */
    __IO uint32_t ODR;      /* 0x14 output data register          */
    __IO uint32_t BSRR;     /* 0x18 bit set/reset register        */
    __IO uint32_t LCKR;     /* 0x1C configuration lock register   */
    __IO uint32_t AFR[2];   /* 0x20 alternate function low/high   */
} GPIO_TypeDef;

typedef struct {
    __IO uint32_t CR;       /* 0x00 clock control                 */
    __IO uint32_t PLLCFGR;  /* 0x04 PLL configuration             */
    __IO uint32_t CFGR;     /* 0x08 clock configuration           */
    __IO uint32_t CIR;      /* 0x0C clock interrupt               */
    __IO uint32_t AHB1RSTR; /* 0x10 AHB1 peripheral reset         */
    uint32_t RESERVED0[7];
    __IO uint32_t AHB1ENR;  /* 0x30 AHB1 peripheral clock enable  */
    uint32_t RESERVED1[3];
    __IO uint32_t APB1ENR;  /* 0x40 APB1 peripheral clock enable  */
    __IO uint32_t APB2ENR;  /* 0x44 APB2 peripheral clock enable  */
} RCC_TypeDef;

typedef struct {
    __IO uint32_t SR;       /* 0x00 status register               */
    __IO uint32_t DR;       /* 0x04 data register                 */
    __IO uint32_t BRR;      /* 0x08 baud rate register            */
    __IO uint32_t CR1;      /* 0x0C control register 1            */
    __IO uint32_t CR2;      /* 0x10 control register 2            */
    __IO uint32_t CR3;      /* 0x14 control register 3            */
} USART_TypeDef;

#define GPIOA   ((GPIO_TypeDef *)GPIOA_BASE)
#define GPIOB   ((GPIO_TypeDef *)GPIOB_BASE)
#define RCC     ((RCC_TypeDef *)RCC_BASE)
#define USART1  ((USART_TypeDef *)USART1_BASE)
#define USART2  ((USART_TypeDef *)USART2_BASE)

/* ---------------------------------------------------------------- bit fields */
#define RCC_AHB1ENR_GPIOAEN   (1UL << 0)
#define RCC_AHB1ENR_GPIOBEN   (1UL << 1)
#define RCC_APB1ENR_USART2EN  (1UL << 17)
#define RCC_APB2ENR_USART1EN  (1UL << 4)

#define USART_SR_RXNE         (1UL << 5)
#define USART_SR_TC           (1UL << 6)
#define USART_SR_TXE          (1UL << 7)
#define USART_CR1_RE          (1UL << 2)
#define USART_CR1_TE          (1UL << 3)
#define USART_CR1_RXNEIE      (1UL << 5)
#define USART_CR1_M           (1UL << 12)
#define USART_CR1_UE          (1UL << 13)
#define USART_CR1_OVER8       (1UL << 15)
#define USART_CR2_STOP_Pos    12U
#define USART_CR2_STOP_Msk    (0x3UL << USART_CR2_STOP_Pos)

#define GPIO_MODER_INPUT      0x0UL
#define GPIO_MODER_OUTPUT     0x1UL
#define GPIO_MODER_AF         0x2UL
#define GPIO_MODER_ANALOG     0x3UL

#endif /* SPK32F4_H */

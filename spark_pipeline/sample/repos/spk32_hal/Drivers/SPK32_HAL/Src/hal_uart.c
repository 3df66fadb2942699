/* hal_uart.c - polled USART driver for the SPK32F4 */
#include "hal_uart.h"

uint32_t hal_uart_brr(uint32_t pclk_hz, uint32_t baud, int over8)
{
    /* USARTDIV = fPCLK / (8 * (2 - OVER8) * baud); BRR holds mantissa[15:4] and fraction[3:0] */
    uint32_t div16 = (pclk_hz + baud / 2U) / baud; /* USARTDIV * 16, rounded */
    if (over8) {
        uint32_t mantissa = div16 >> 4;
        uint32_t fraction = (div16 & 0xFU) >> 1; /* only three fraction bits with OVER8 */
        return (mantissa << 4) | fraction;
    }
    return div16;
}

int hal_uart_init(uart_t *uart, USART_TypeDef *regs, uint32_t pclk_hz, uint32_t baud)
{
    if (baud == 0U || pclk_hz < 16U * baud) {
        return -1;
    }
    uart->regs = regs;
    uart->pclk_hz = pclk_hz;
    uart->baud = baud;
    if (regs == USART1) {
        RCC->APB2ENR |= RCC_APB2ENR_USART1EN;
    } else if (regs == USART2) {
        RCC->APB1ENR |= RCC_APB1ENR_USART2EN;
    }
    regs->CR1 = 0U;                         /* 8 data bits (M = 0), oversampling by 16 */
    regs->CR2 &= ~USART_CR2_STOP_Msk;       /* 1 stop bit */
    regs->BRR = hal_uart_brr(pclk_hz, baud, 0);
    regs->CR1 = USART_CR1_TE | USART_CR1_RE | USART_CR1_UE;
    return 0;
}

void hal_uart_putc(uart_t *uart, char c)
{
    while (!(uart->regs->SR & USART_SR_TXE)) {
    }
    uart->regs->DR = (uint8_t)c;
}

void hal_uart_write(uart_t *uart, const char *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        hal_uart_putc(uart, data[i]);
    }
    while (!(uart->regs->SR & USART_SR_TC)) {
    }
}

int hal_uart_getc(uart_t *uart, char *out)
{
    if (!(uart->regs->SR & USART_SR_RXNE)) {
        return 0;
    }
    *out = (char)(uart->regs->DR & 0xFFU);
    return 1;
}

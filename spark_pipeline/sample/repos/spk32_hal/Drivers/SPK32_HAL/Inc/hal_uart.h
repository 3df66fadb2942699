#ifndef HAL_UART_H
#define HAL_UART_H
#include <stddef.h>
#include "spk32f4.h"

typedef struct {
    USART_TypeDef *regs;
    uint32_t pclk_hz;
    uint32_t baud;
} uart_t;

int hal_uart_init(uart_t *uart, USART_TypeDef *regs, uint32_t pclk_hz, uint32_t baud);
void hal_uart_putc(uart_t *uart, char c);
void hal_uart_write(uart_t *uart, const char *data, size_t len);
int hal_uart_getc(uart_t *uart, char *out);
uint32_t hal_uart_brr(uint32_t pclk_hz, uint32_t baud, int over8);
#endif

/* main.c - echo characters on USART2 (PA2 TX, PA3 RX) and blink PA5 */
#include "hal_gpio.h"
#include "hal_uart.h"

#define PCLK1_HZ 16000000UL

int main(void)
{
    uart_t console;
    char c;

    hal_gpio_clock_enable(GPIOA);
    hal_gpio_set_af(GPIOA, 2, 7);
    hal_gpio_set_af(GPIOA, 3, 7);
    hal_gpio_set_mode(GPIOA, 5, GPIO_MODE_OUTPUT);
    hal_uart_init(&console, USART2, PCLK1_HZ, 115200);
    hal_uart_write(&console, "ready\r\n", 7);
    for (;;) {
        if (hal_uart_getc(&console, &c)) {
            hal_uart_putc(&console, c);
            hal_gpio_toggle(GPIOA, 5);
        }
    }
}

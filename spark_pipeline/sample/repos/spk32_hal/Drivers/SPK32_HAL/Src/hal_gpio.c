/* hal_gpio.c - GPIO port configuration and pin access for the SPK32F4 */
#include "hal_gpio.h"

void hal_gpio_clock_enable(GPIO_TypeDef *port)
{
    if (port == GPIOA) {
        RCC->AHB1ENR |= RCC_AHB1ENR_GPIOAEN;
    } else if (port == GPIOB) {
        RCC->AHB1ENR |= RCC_AHB1ENR_GPIOBEN;
    }
    (void)RCC->AHB1ENR; /* read back: the clock is running before the first access */
}

void hal_gpio_set_mode(GPIO_TypeDef *port, uint32_t pin, gpio_mode_t mode)
{
    /* MODER holds two bits per pin */
    port->MODER = (port->MODER & ~(0x3UL << (pin * 2U))) | ((uint32_t)mode << (pin * 2U));
}

void hal_gpio_set_pull(GPIO_TypeDef *port, uint32_t pin, gpio_pull_t pull)
{
    port->PUPDR = (port->PUPDR & ~(0x3UL << (pin * 2U))) | ((uint32_t)pull << (pin * 2U));
}

void hal_gpio_set_af(GPIO_TypeDef *port, uint32_t pin, uint32_t af)
{
    /* AFR[0] (AFRL) covers pins 0-7, AFR[1] (AFRH) pins 8-15, four bits per pin */
    uint32_t idx = pin >> 3;
    uint32_t shift = (pin & 0x7U) * 4U;
    port->AFR[idx] = (port->AFR[idx] & ~(0xFUL << shift)) | ((af & 0xFUL) << shift);
    hal_gpio_set_mode(port, pin, GPIO_MODE_AF);
}

void hal_gpio_write(GPIO_TypeDef *port, uint32_t pin, int level)
{
    /* BSRR: the low half sets, the high half resets, atomically */
    port->BSRR = level ? (1UL << pin) : (1UL << (pin + 16U));
}

int hal_gpio_read(GPIO_TypeDef *port, uint32_t pin)
{
    return (int)((port->IDR >> pin) & 1UL);
}

void hal_gpio_toggle(GPIO_TypeDef *port, uint32_t pin)
{
    hal_gpio_write(port, pin, !((port->ODR >> pin) & 1UL));
}

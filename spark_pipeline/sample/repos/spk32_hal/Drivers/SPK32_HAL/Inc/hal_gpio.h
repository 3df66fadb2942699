#ifndef HAL_GPIO_H
#define HAL_GPIO_H
#include "spk32f4.h"

typedef enum { GPIO_MODE_INPUT = 0, GPIO_MODE_OUTPUT = 1, GPIO_MODE_AF = 2, GPIO_MODE_ANALOG = 3 } gpio_mode_t;
typedef enum { GPIO_PULL_NONE = 0, GPIO_PULL_UP = 1, GPIO_PULL_DOWN = 2 } gpio_pull_t;

void hal_gpio_clock_enable(GPIO_TypeDef *port);
void hal_gpio_set_mode(GPIO_TypeDef *port, uint32_t pin, gpio_mode_t mode);
void hal_gpio_set_pull(GPIO_TypeDef *port, uint32_t pin, gpio_pull_t pull);
void hal_gpio_set_af(GPIO_TypeDef *port, uint32_t pin, uint32_t af);
void hal_gpio_write(GPIO_TypeDef *port, uint32_t pin, int level);
int hal_gpio_read(GPIO_TypeDef *port, uint32_t pin);
void hal_gpio_toggle(GPIO_TypeDef *port, uint32_t pin);
#endif

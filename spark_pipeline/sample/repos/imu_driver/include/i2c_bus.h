/* i2c_bus.h - a tiny blocking I2C bus abstraction for sensor drivers */
#ifndef I2C_BUS_H
#define I2C_BUS_H

#include <stddef.h>
#include <stdint.h>

typedef struct i2c_bus {
    int (*write)(struct i2c_bus *bus, uint8_t addr, const uint8_t *data, size_t len);
    int (*write_read)(struct i2c_bus *bus, uint8_t addr, const uint8_t *out, size_t out_len,
                      uint8_t *in, size_t in_len);
    void *ctx;
} i2c_bus_t;

int i2c_write_reg(i2c_bus_t *bus, uint8_t addr, uint8_t reg, uint8_t value);
int i2c_read_regs(i2c_bus_t *bus, uint8_t addr, uint8_t reg, uint8_t *buf, size_t len);

#endif

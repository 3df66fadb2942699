/* i2c_bus.c - register helpers on top of the bus callbacks */
#include "i2c_bus.h"

int i2c_write_reg(i2c_bus_t *bus, uint8_t addr, uint8_t reg, uint8_t value)
{
    uint8_t frame[2] = { reg, value };
    return bus->write(bus, addr, frame, sizeof frame);
}

int i2c_read_regs(i2c_bus_t *bus, uint8_t addr, uint8_t reg, uint8_t *buf, size_t len)
{
    /* Repeated start: write the register pointer, then read len bytes. */
    return bus->write_read(bus, addr, &reg, 1, buf, len);
}

/*
 * skm6.c - driver for the Sparkline SKM-6 six-axis IMU.
 */
#include "skm6.h"

#define SKM6_GYRO_OUTPUT_RATE_HZ   8000u
#define SKM6_GYRO_OUTPUT_RATE_DLPF 1000u

static int update_bits(skm6_t *dev, uint8_t reg, uint8_t mask, uint8_t value)
{
    uint8_t current;
    int rc = i2c_read_regs(dev->bus, dev->address, reg, &current, 1);
    if (rc != 0) {
        return rc;
    }
    current = (uint8_t)((current & ~mask) | (value & mask));
    return i2c_write_reg(dev->bus, dev->address, reg, current);
}

int skm6_reset(skm6_t *dev)
{
    /* DEVICE_RESET clears every register to its default; the part then sleeps. */
    return i2c_write_reg(dev->bus, dev->address, SKM6_REG_PWR_MGMT_1, SKM6_PWR_MGMT_1_DEVICE_RESET);
}

int skm6_init(skm6_t *dev, i2c_bus_t *bus, uint8_t address)
{
    uint8_t who = 0;
    int rc;

    dev->bus = bus;
    dev->address = address;
    rc = i2c_read_regs(bus, address, SKM6_REG_WHO_AM_I, &who, 1);
    if (rc != 0) {
        return rc;
    }
    if (who != SKM6_WHO_AM_I_VALUE) {
        return -2; /* not an SKM-6 */
    }
    /* Wake up and use the X gyro PLL as clock source, as the register map recommends. */
    rc = i2c_write_reg(bus, address, SKM6_REG_PWR_MGMT_1, SKM6_CLKSEL_PLL_XGYRO);
    if (rc != 0) {
        return rc;
    }
    rc = skm6_set_accel_range(dev, SKM6_ACCEL_2G);
    if (rc == 0) {
        rc = skm6_set_gyro_range(dev, SKM6_GYRO_250DPS);
    }
    return rc;
}

int skm6_set_dlpf(skm6_t *dev, uint8_t cfg)
{
    return update_bits(dev, SKM6_REG_CONFIG, SKM6_CONFIG_DLPF_CFG_MASK, cfg);
}

int skm6_set_sample_rate(skm6_t *dev, uint16_t rate_hz)
{
    /* Sample Rate = Gyroscope Output Rate / (1 + SMPLRT_DIV) */
    uint8_t config = 0;
    uint32_t base;
    uint32_t div;
    int rc = i2c_read_regs(dev->bus, dev->address, SKM6_REG_CONFIG, &config, 1);
    if (rc != 0) {
        return rc;
    }
    base = (config & SKM6_CONFIG_DLPF_CFG_MASK) ? SKM6_GYRO_OUTPUT_RATE_DLPF : SKM6_GYRO_OUTPUT_RATE_HZ;
    if (rate_hz == 0 || rate_hz > base) {
        return -1;
    }
    div = base / rate_hz - 1u;
    if (div > 255u) {
        div = 255u;
    }
    return i2c_write_reg(dev->bus, dev->address, SKM6_REG_SMPLRT_DIV, (uint8_t)div);
}

int skm6_set_accel_range(skm6_t *dev, skm6_accel_range_t range)
{
    int rc = update_bits(dev, SKM6_REG_ACCEL_CONFIG, SKM6_ACCEL_AFS_SEL_MASK,
                         (uint8_t)(range << SKM6_ACCEL_AFS_SEL_SHIFT));
    if (rc == 0) {
        dev->accel_range = range;
    }
    return rc;
}

int skm6_set_gyro_range(skm6_t *dev, skm6_gyro_range_t range)
{
    int rc = update_bits(dev, SKM6_REG_GYRO_CONFIG, SKM6_GYRO_FS_SEL_MASK,
                         (uint8_t)(range << SKM6_GYRO_FS_SEL_SHIFT));
    if (rc == 0) {
        dev->gyro_range = range;
    }
    return rc;
}

int skm6_read_sample(skm6_t *dev, skm6_sample_t *out)
{
    /* ACCEL_XOUT_H .. GYRO_ZOUT_L are 14 consecutive big-endian registers. */
    uint8_t raw[14];
    int i;
    int rc = i2c_read_regs(dev->bus, dev->address, SKM6_REG_ACCEL_XOUT_H, raw, sizeof raw);
    if (rc != 0) {
        return rc;
    }
    for (i = 0; i < 3; i++) {
        out->accel[i] = (int16_t)((raw[2 * i] << 8) | raw[2 * i + 1]);
        out->gyro[i] = (int16_t)((raw[8 + 2 * i] << 8) | raw[8 + 2 * i + 1]);
    }
    out->temp_raw = (int16_t)((raw[6] << 8) | raw[7]);
    return 0;
}

float skm6_temp_celsius(int16_t raw)
{
    /* Temperature in degrees C = TEMP_OUT / 340 + 36.53 */
    return (float)raw / 340.0f + 36.53f;
}

int skm6_enable_data_ready_irq(skm6_t *dev, int enable)
{
    return update_bits(dev, SKM6_REG_INT_ENABLE, SKM6_INT_DATA_RDY, enable ? SKM6_INT_DATA_RDY : 0u);
}

int skm6_fifo_enable(skm6_t *dev, int enable)
{
    int rc = update_bits(dev, SKM6_REG_USER_CTRL, SKM6_USER_CTRL_FIFO_EN | SKM6_USER_CTRL_FIFO_RESET,
                         enable ? (SKM6_USER_CTRL_FIFO_EN | SKM6_USER_CTRL_FIFO_RESET) : 0u);
    if (rc == 0) {
        /* accelerometer and gyroscope samples into the FIFO */
        rc = i2c_write_reg(dev->bus, dev->address, SKM6_REG_FIFO_EN, enable ? 0x78u : 0x00u);
    }
    return rc;
}

int skm6_fifo_count(skm6_t *dev, uint16_t *count)
{
    uint8_t raw[2];
    int rc = i2c_read_regs(dev->bus, dev->address, SKM6_REG_FIFO_COUNT_H, raw, 2);
    if (rc == 0) {
        *count = (uint16_t)((raw[0] << 8) | raw[1]);
    }
    return rc;
}

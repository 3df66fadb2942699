/*
 * skm6.h - register map and driver API for the Sparkline SKM-6 six-axis IMU
 * (3-axis accelerometer + 3-axis gyroscope) on an I2C bus.
 *
 * Register addresses and bit fields follow the SKM-6 register map, revision 1.2.
 */
#ifndef SKM6_H
#define SKM6_H

#include <stdint.h>
#include "i2c_bus.h"

#define SKM6_I2C_ADDR_LOW       0x68u   /* AD0 pin tied low  */
#define SKM6_I2C_ADDR_HIGH      0x69u   /* AD0 pin tied high */

/* Register addresses */
#define SKM6_REG_SMPLRT_DIV     0x19u
#define SKM6_REG_CONFIG         0x1Au
#define SKM6_REG_GYRO_CONFIG    0x1Bu
#define SKM6_REG_ACCEL_CONFIG   0x1Cu
#define SKM6_REG_FIFO_EN        0x23u
#define SKM6_REG_INT_PIN_CFG    0x37u
#define SKM6_REG_INT_ENABLE     0x38u
#define SKM6_REG_INT_STATUS     0x3Au
#define SKM6_REG_ACCEL_XOUT_H   0x3Bu
#define SKM6_REG_TEMP_OUT_H     0x41u
#define SKM6_REG_GYRO_XOUT_H    0x43u
#define SKM6_REG_USER_CTRL      0x6Au
#define SKM6_REG_PWR_MGMT_1     0x6Bu
#define SKM6_REG_PWR_MGMT_2     0x6Cu
#define SKM6_REG_FIFO_COUNT_H   0x72u
#define SKM6_REG_FIFO_R_W       0x74u
#define SKM6_REG_WHO_AM_I       0x75u

#define SKM6_WHO_AM_I_VALUE     0x6Cu

/* CONFIG: digital low-pass filter */
#define SKM6_CONFIG_DLPF_CFG_MASK   0x07u

/* GYRO_CONFIG: full-scale range FS_SEL[4:3] */
#define SKM6_GYRO_FS_SEL_SHIFT      3u
#define SKM6_GYRO_FS_SEL_MASK       (0x3u << SKM6_GYRO_FS_SEL_SHIFT)

/* ACCEL_CONFIG: full-scale range AFS_SEL[4:3] */
#define SKM6_ACCEL_AFS_SEL_SHIFT    3u
#define SKM6_ACCEL_AFS_SEL_MASK     (0x3u << SKM6_ACCEL_AFS_SEL_SHIFT)

/* INT_ENABLE / INT_STATUS bits */
#define SKM6_INT_DATA_RDY           (1u << 0)
#define SKM6_INT_FIFO_OFLOW         (1u << 4)

/* PWR_MGMT_1 bits */
#define SKM6_PWR_MGMT_1_DEVICE_RESET (1u << 7)
#define SKM6_PWR_MGMT_1_SLEEP        (1u << 6)
#define SKM6_PWR_MGMT_1_CLKSEL_MASK  0x07u
#define SKM6_CLKSEL_PLL_XGYRO        0x01u

/* USER_CTRL bits */
#define SKM6_USER_CTRL_FIFO_EN       (1u << 6)
#define SKM6_USER_CTRL_FIFO_RESET    (1u << 2)

typedef enum {
    SKM6_ACCEL_2G = 0,
    SKM6_ACCEL_4G = 1,
    SKM6_ACCEL_8G = 2,
    SKM6_ACCEL_16G = 3,
} skm6_accel_range_t;

typedef enum {
    SKM6_GYRO_250DPS = 0,
    SKM6_GYRO_500DPS = 1,
    SKM6_GYRO_1000DPS = 2,
    SKM6_GYRO_2000DPS = 3,
} skm6_gyro_range_t;

typedef struct {
    int16_t accel[3];
    int16_t temp_raw;
    int16_t gyro[3];
} skm6_sample_t;

typedef struct {
    i2c_bus_t *bus;
    uint8_t address;
    skm6_accel_range_t accel_range;
    skm6_gyro_range_t gyro_range;
} skm6_t;

int skm6_init(skm6_t *dev, i2c_bus_t *bus, uint8_t address);
int skm6_reset(skm6_t *dev);
int skm6_set_sample_rate(skm6_t *dev, uint16_t rate_hz);
int skm6_set_dlpf(skm6_t *dev, uint8_t cfg);
int skm6_set_accel_range(skm6_t *dev, skm6_accel_range_t range);
int skm6_set_gyro_range(skm6_t *dev, skm6_gyro_range_t range);
int skm6_read_sample(skm6_t *dev, skm6_sample_t *out);
int skm6_enable_data_ready_irq(skm6_t *dev, int enable);
int skm6_fifo_enable(skm6_t *dev, int enable);
int skm6_fifo_count(skm6_t *dev, uint16_t *count);
float skm6_temp_celsius(int16_t raw);

#endif /* SKM6_H */

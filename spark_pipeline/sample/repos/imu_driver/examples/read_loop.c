/* read_loop.c - poll the SKM-6 at 100 Hz and print scaled readings */
#include <stdio.h>
#include "skm6.h"

extern i2c_bus_t board_i2c1;
extern void board_delay_ms(unsigned ms);

int main(void)
{
    skm6_t imu;
    skm6_sample_t s;

    if (skm6_init(&imu, &board_i2c1, SKM6_I2C_ADDR_LOW) != 0) {
        printf("SKM-6 not found\n");
        return 1;
    }
    skm6_set_dlpf(&imu, 3);
    skm6_set_sample_rate(&imu, 100);
    for (;;) {
        if (skm6_read_sample(&imu, &s) == 0) {
            printf("ax=%d ay=%d az=%d t=%.2f\n", s.accel[0], s.accel[1], s.accel[2],
                   (double)skm6_temp_celsius(s.temp_raw));
        }
        board_delay_ms(10);
    }
}

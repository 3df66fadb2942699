// SPDX-License-Identifier: GPL-2.0
/*
 * gpio-sx8.c - driver for the Sparkline SX8 8-bit I2C GPIO expander.
 */
#include <linux/gpio/driver.h>
#include <linux/gpio/consumer.h>
#include <linux/i2c.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/of.h>

#define SX8_REG_INPUT     0x00  /* INPUT_PORT: pin levels, read-only      */
#define SX8_REG_OUTPUT    0x01  /* OUTPUT_PORT: output latch             */
#define SX8_REG_POLARITY  0x02  /* POLARITY_INV: 1 inverts the input bit  */
#define SX8_REG_CONFIG    0x03  /* CONFIG: 1 = input, 0 = output          */
#define SX8_REG_INT_MASK  0x04  /* INT_MASK: 0 enables the line's IRQ     */
#define SX8_NGPIO         8

struct sx8_chip {
	struct i2c_client *client;
	struct gpio_chip gc;
	struct mutex lock;      /* protects the cached registers */
	u8 out_cache;
	u8 dir_cache;
};

static int sx8_write(struct sx8_chip *chip, u8 reg, u8 val)
{
	return i2c_smbus_write_byte_data(chip->client, reg, val);
}

static int sx8_read(struct sx8_chip *chip, u8 reg)
{
	return i2c_smbus_read_byte_data(chip->client, reg);
}

static int sx8_direction_input(struct gpio_chip *gc, unsigned int offset)
{
	struct sx8_chip *chip = gpiochip_get_data(gc);
	int ret;

	mutex_lock(&chip->lock);
	chip->dir_cache |= BIT(offset);
	ret = sx8_write(chip, SX8_REG_CONFIG, chip->dir_cache);
	mutex_unlock(&chip->lock);
	return ret;
}

static int sx8_direction_output(struct gpio_chip *gc, unsigned int offset, int value)
{
	struct sx8_chip *chip = gpiochip_get_data(gc);
	int ret;

	mutex_lock(&chip->lock);
	/* Set the output latch first so the pin never glitches to the old level. */
	if (value)
		chip->out_cache |= BIT(offset);
	else
		chip->out_cache &= ~BIT(offset);
	ret = sx8_write(chip, SX8_REG_OUTPUT, chip->out_cache);
	if (!ret) {
		chip->dir_cache &= ~BIT(offset);
		ret = sx8_write(chip, SX8_REG_CONFIG, chip->dir_cache);
	}
	mutex_unlock(&chip->lock);
	return ret;
}

static int sx8_get(struct gpio_chip *gc, unsigned int offset)
{
	struct sx8_chip *chip = gpiochip_get_data(gc);
	int val = sx8_read(chip, SX8_REG_INPUT);

	return val < 0 ? val : !!(val & BIT(offset));
}

static int sx8_set(struct gpio_chip *gc, unsigned int offset, int value)
{
	struct sx8_chip *chip = gpiochip_get_data(gc);
	int ret;

	mutex_lock(&chip->lock);
	if (value)
		chip->out_cache |= BIT(offset);
	else
		chip->out_cache &= ~BIT(offset);
	ret = sx8_write(chip, SX8_REG_OUTPUT, chip->out_cache);
	mutex_unlock(&chip->lock);
	return ret;
}

static int sx8_probe(struct i2c_client *client)
{
	struct sx8_chip *chip;
	struct gpio_desc *reset;
	int ret;

	chip = devm_kzalloc(&client->dev, sizeof(*chip), GFP_KERNEL);
	if (!chip)
		return -ENOMEM;
	chip->client = client;
	mutex_init(&chip->lock);

	reset = devm_gpiod_get_optional(&client->dev, "reset", GPIOD_OUT_LOW);
	if (IS_ERR(reset))
		return PTR_ERR(reset);

	/* Power-on defaults: every line an input, outputs latched high, no inversion. */
	chip->dir_cache = 0xff;
	chip->out_cache = 0xff;
	ret = sx8_write(chip, SX8_REG_POLARITY, 0x00);
	if (ret)
		return ret;

	chip->gc.label = client->name;
	chip->gc.parent = &client->dev;
	chip->gc.owner = THIS_MODULE;
	chip->gc.base = -1;
	chip->gc.ngpio = SX8_NGPIO;
	chip->gc.can_sleep = true;
	chip->gc.direction_input = sx8_direction_input;
	chip->gc.direction_output = sx8_direction_output;
	chip->gc.get = sx8_get;
	chip->gc.set = sx8_set;
	return devm_gpiochip_add_data(&client->dev, &chip->gc, chip);
}

static const struct of_device_id sx8_of_match[] = {
	{ .compatible = "sparkline,sx8" },
	{ }
};
MODULE_DEVICE_TABLE(of, sx8_of_match);

static struct i2c_driver sx8_driver = {
	.driver = {
		.name = "gpio-sx8",
		.of_match_table = sx8_of_match,
	},
	.probe = sx8_probe,
};
module_i2c_driver(sx8_driver);

MODULE_DESCRIPTION("Sparkline SX8 I2C GPIO expander");
MODULE_LICENSE("GPL");

/* crc32.c - CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), table driven */
#include <stddef.h>
#include <stdint.h>

static uint32_t table[256];
static int table_ready;

static void crc32_build_table(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1u) ? (0xEDB88320u ^ (c >> 1)) : (c >> 1);
        }
        table[i] = c;
    }
    table_ready = 1;
}

uint32_t crc32_update(uint32_t crc, const void *data, size_t len)
{
    const uint8_t *p = data;
    if (!table_ready) {
        crc32_build_table();
    }
    crc = ~crc;
    while (len--) {
        crc = table[(crc ^ *p++) & 0xFFu] ^ (crc >> 8);
    }
    return ~crc;
}

uint32_t crc32(const void *data, size_t len)
{
    return crc32_update(0, data, len);
}

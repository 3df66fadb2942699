/* aes_hw.c - block processing on the AES accelerator, polled on CCF */
#include "aes_hw.h"

static uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

void aes_hw_set_key(const uint8_t key[16])
{
    /* KEYR3 holds the most significant word of the key */
    for (int i = 0; i < 4; i++) {
        AES->KEYR[3 - i] = load_be32(&key[4 * i]);
    }
}

static void load_iv(const uint8_t iv[16])
{
    for (int i = 0; i < 4; i++) {
        AES->IVR[3 - i] = iv ? load_be32(&iv[4 * i]) : 0U;
    }
}

static int process(uint32_t cr, const uint8_t iv[16], const uint8_t *in, uint8_t *out, size_t len)
{
    if (len % 16U != 0U) {
        return -1; /* the engine works on whole 128-bit blocks */
    }
    AES->CR = 0U;
    load_iv(iv);
    AES->CR = cr | AES_CR_EN;
    for (size_t off = 0; off < len; off += 16U) {
        for (int w = 0; w < 4; w++) {
            AES->DINR = load_be32(&in[off + 4U * (size_t)w]);
        }
        while (!(AES->SR & AES_SR_CCF)) {
        }
        if (AES->SR & (AES_SR_RDERR | AES_SR_WRERR)) {
            AES->CR = 0U;
            return -2;
        }
        for (int w = 0; w < 4; w++) {
            store_be32(&out[off + 4U * (size_t)w], AES->DOUTR);
        }
        AES->CR |= AES_CR_CCFC; /* clear the computation-complete flag */
    }
    AES->CR = 0U;
    return 0;
}

static uint32_t chain_bits(aes_chain_t chain)
{
    switch (chain) {
    case AES_MODE_CBC: return AES_CR_CHMOD_CBC;
    case AES_MODE_CTR: return AES_CR_CHMOD_CTR;
    default: return AES_CR_CHMOD_ECB;
    }
}

int aes_hw_encrypt(aes_chain_t chain, const uint8_t iv[16], const uint8_t *in, uint8_t *out, size_t len)
{
    return process(AES_CR_MODE_ENCRYPT | chain_bits(chain), iv, in, out, len);
}

int aes_hw_decrypt(aes_chain_t chain, const uint8_t iv[16], const uint8_t *in, uint8_t *out, size_t len)
{
    uint32_t cr = chain_bits(chain);
    if (chain == AES_MODE_CTR) {
        return process(AES_CR_MODE_ENCRYPT | cr, iv, in, out, len); /* CTR is symmetric */
    }
    /* ECB and CBC decryption first derive the decryption key schedule. */
    AES->CR = AES_CR_MODE_KEYDERIV | AES_CR_EN;
    while (!(AES->SR & AES_SR_CCF)) {
    }
    AES->CR |= AES_CR_CCFC;
    return process(AES_CR_MODE_DECRYPT | cr, iv, in, out, len);
}

/* aes_hw.h - driver for the Sparkline AES-128 hardware accelerator */
#ifndef AES_HW_H
#define AES_HW_H
#include <stddef.h>
#include <stdint.h>

#define AES_BASE 0x50060000UL

typedef struct {
    volatile uint32_t CR;      /* AES_CR    control                      */
    volatile uint32_t SR;      /* AES_SR    status                       */
    volatile uint32_t DINR;    /* AES_DINR  data input                   */
    volatile uint32_t DOUTR;   /* AES_DOUTR data output                  */
    volatile uint32_t KEYR[4]; /* AES_KEYR0..3 key, KEYR3 = bits 127:96  */
    volatile uint32_t IVR[4];  /* AES_IVR0..3 initialisation vector      */
} AES_TypeDef;

#define AES ((AES_TypeDef *)AES_BASE)

#define AES_CR_EN            (1UL << 0)
#define AES_CR_MODE_Pos      3U
#define AES_CR_MODE_ENCRYPT  (0UL << AES_CR_MODE_Pos)
#define AES_CR_MODE_KEYDERIV (1UL << AES_CR_MODE_Pos)
#define AES_CR_MODE_DECRYPT  (2UL << AES_CR_MODE_Pos)
#define AES_CR_CHMOD_Pos     5U
#define AES_CR_CHMOD_ECB     (0UL << AES_CR_CHMOD_Pos)
#define AES_CR_CHMOD_CBC     (1UL << AES_CR_CHMOD_Pos)
#define AES_CR_CHMOD_CTR     (2UL << AES_CR_CHMOD_Pos)
#define AES_CR_CCFC          (1UL << 7)
#define AES_SR_CCF           (1UL << 0)
#define AES_SR_RDERR         (1UL << 1)
#define AES_SR_WRERR         (1UL << 2)

typedef enum { AES_MODE_ECB, AES_MODE_CBC, AES_MODE_CTR } aes_chain_t;

void aes_hw_set_key(const uint8_t key[16]);
int aes_hw_encrypt(aes_chain_t chain, const uint8_t iv[16], const uint8_t *in, uint8_t *out, size_t len);
int aes_hw_decrypt(aes_chain_t chain, const uint8_t iv[16], const uint8_t *in, uint8_t *out, size_t len);
#endif

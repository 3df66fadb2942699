/* str_utils.c - bounded string helpers that always terminate their output */
#include <ctype.h>
#include <stddef.h>
#include <string.h>

size_t str_copy(char *dst, size_t size, const char *src)
{
    size_t len = strlen(src);
    if (size != 0) {
        size_t n = len < size - 1 ? len : size - 1;
        memcpy(dst, src, n);
        dst[n] = '\0';
    }
    return len; /* the length it tried to create, as strlcpy does */
}

char *str_trim(char *s)
{
    char *end;
    while (isspace((unsigned char)*s)) {
        s++;
    }
    if (*s == '\0') {
        return s;
    }
    end = s + strlen(s) - 1;
    while (end > s && isspace((unsigned char)*end)) {
        *end-- = '\0';
    }
    return s;
}

int str_starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

int str_parse_uint(const char *s, unsigned long *out)
{
    unsigned long value = 0;
    if (*s == '\0') {
        return -1;
    }
    for (; *s; s++) {
        if (!isdigit((unsigned char)*s)) {
            return -1;
        }
        value = value * 10u + (unsigned long)(*s - '0');
    }
    *out = value;
    return 0;
}

/* ring_buffer.c - a fixed-capacity byte FIFO; capacity must be a power of two */
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t *data;
    size_t capacity;  /* power of two */
    size_t head;      /* next write */
    size_t tail;      /* next read */
} ring_buffer_t;

int ring_init(ring_buffer_t *rb, uint8_t *storage, size_t capacity)
{
    if (capacity == 0 || (capacity & (capacity - 1)) != 0) {
        return -1;
    }
    rb->data = storage;
    rb->capacity = capacity;
    rb->head = rb->tail = 0;
    return 0;
}

size_t ring_used(const ring_buffer_t *rb)
{
    return rb->head - rb->tail;
}

int ring_push(ring_buffer_t *rb, uint8_t byte)
{
    if (ring_used(rb) == rb->capacity) {
        return 0; /* full */
    }
    rb->data[rb->head & (rb->capacity - 1)] = byte;
    rb->head++;
    return 1;
}

int ring_pop(ring_buffer_t *rb, uint8_t *byte)
{
    if (rb->head == rb->tail) {
        return 0; /* empty */
    }
    *byte = rb->data[rb->tail & (rb->capacity - 1)];
    rb->tail++;
    return 1;
}

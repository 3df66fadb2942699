/* list.c - an intrusive doubly linked list with a sentinel head */
#include <stddef.h>

struct list_node {
    struct list_node *next;
    struct list_node *prev;
};

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

void list_init(struct list_node *head)
{
    head->next = head;
    head->prev = head;
}

int list_empty(const struct list_node *head)
{
    return head->next == head;
}

static void list_link(struct list_node *node, struct list_node *prev, struct list_node *next)
{
    next->prev = node;
    node->next = next;
    node->prev = prev;
    prev->next = node;
}

void list_push_back(struct list_node *head, struct list_node *node)
{
    list_link(node, head->prev, head);
}

void list_remove(struct list_node *node)
{
    node->prev->next = node->next;
    node->next->prev = node->prev;
    node->next = node->prev = node;
}

size_t list_length(const struct list_node *head)
{
    size_t n = 0;
    for (const struct list_node *it = head->next; it != head; it = it->next) {
        n++;
    }
    return n;
}

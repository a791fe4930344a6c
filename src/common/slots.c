/* slots.c - see slots.h. */
#include "common/slots.h"
#include <unistd.h>

int slot_take(slot_set_t *s)
{
    pthread_mutex_lock(&s->mu);
    int start = (int)((unsigned)getpid() * s->spread % (unsigned)s->n), found = -1;
    for (int k = 0; k < s->n; k++) {
        int i = (start + k) % s->n;
        if (!(s->bits[i / 8] & (1u << (i % 8)))) {
            s->bits[i / 8] |= (unsigned char)(1u << (i % 8));
            found = i;
            break;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return found;
}

void slot_give(slot_set_t *s, int i)
{
    if (i < 0 || i >= s->n)
        return;
    pthread_mutex_lock(&s->mu);
    s->bits[i / 8] &= (unsigned char)~(1u << (i % 8));
    pthread_mutex_unlock(&s->mu);
}

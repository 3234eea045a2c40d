/*
 * fdio.c - writing a whole buffer to a file descriptor (fdio.h).
 */
#include "common/fdio.h"

#include <assert.h>
#include <errno.h>
#include <sys/types.h>
#include <unistd.h>

int fd_write_all(int fd, const void *data, size_t len, int64_t at)
{
    assert(at >= 0 || at == FDIO_APPEND);
    const unsigned char *p = data;
    while (len > 0) {
        ssize_t n = at == FDIO_APPEND ? write(fd, p, len) : pwrite(fd, p, len, (off_t)at);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (n == 0) errno = EIO; /* no progress and no error: do not spin */
            return -1;
        }
        p += n;
        len -= (size_t)n;
        if (at != FDIO_APPEND) at += n;
    }
    return 0;
}

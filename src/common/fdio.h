/*
 * fdio.h - writing a whole buffer to a file descriptor.
 *
 * write(2) and pwrite(2) may write less than asked (a signal, a full disk
 * part-way) or be interrupted before writing anything; every caller that
 * needs all of its bytes on the file loops the same way, so the loop is here
 * once: the checkpoint's log and snapshots, the cold store's scratch file.
 */
#ifndef SESSIONIZER_FDIO_H
#define SESSIONIZER_FDIO_H

#include <stddef.h>
#include <stdint.h>

/* at: the file offset to write at (pwrite, the file position unchanged), or
 * FDIO_APPEND to write at and advance the file position (write). */
#define FDIO_APPEND ((int64_t)-1)

/* Writes all len bytes, retrying after EINTR and short writes. 0, or -1 with
 * errno set (EIO when the kernel wrote nothing and gave no reason); after a
 * failure an unknown prefix of the bytes may be on the file. */
int fd_write_all(int fd, const void *data, size_t len, int64_t at);

#endif

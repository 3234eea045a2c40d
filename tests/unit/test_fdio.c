/*
 * test_fdio.c - fd_write_all (src/common/fdio.h): every byte lands where it
 * was asked (at an offset without moving the file position, or at the
 * position, advancing it), and a write the kernel cuts short part-way is
 * carried on until it fails with the kernel's reason, not reported done.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "common/fdio.h"

static int temp_file(void)
{
    char path[] = "/tmp/test_fdio.XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    unlink(path);
    return fd;
}

static void test_offsets(void)
{
    int fd = temp_file();
    CHECK_EQ_I64(fd_write_all(fd, "head", 4, FDIO_APPEND), 0);
    CHECK_EQ_I64(fd_write_all(fd, "XY", 2, 10), 0); /* a hole of zeros before it */
    CHECK_EQ_I64(lseek(fd, 0, SEEK_CUR), 4);         /* pwrite leaves the position */
    CHECK_EQ_I64(fd_write_all(fd, "ab", 2, FDIO_APPEND), 0);
    CHECK_EQ_I64(fd_write_all(fd, "", 0, 3), 0);
    char got[16] = {0};
    CHECK_EQ_I64(pread(fd, got, sizeof got, 0), 12);
    CHECK(memcmp(got, "headab\0\0\0\0XY", 12) == 0);
    close(fd);
    errno = 0;
    CHECK_EQ_I64(fd_write_all(fd, "x", 1, FDIO_APPEND), -1);
    CHECK_EQ_I64(errno, EBADF);
}

/* A file size limit makes the kernel write up to it and return a short count,
 * then fail the next write with EFBIG: the helper must write the allowed
 * prefix, go on, and report that failure. */
static void test_short_write(void)
{
    struct rlimit old;
    CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
    if (old.rlim_max != RLIM_INFINITY && old.rlim_max < 4096) return; /* cannot set it lower */
    signal(SIGXFSZ, SIG_IGN);
    int fd = temp_file();
    struct rlimit lim = {1000, old.rlim_max};
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    char data[3000];
    memset(data, 'z', sizeof data);
    errno = 0;
    int rc = fd_write_all(fd, data, sizeof data, 500);
    int e = errno;
    CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
    CHECK_EQ_I64(rc, -1);
    CHECK_EQ_I64(e, EFBIG);
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    CHECK_EQ_I64(st.st_size, 1000); /* the allowed 500 bytes went in */
    close(fd);
    signal(SIGXFSZ, SIG_DFL);
}

int main(void)
{
    test_offsets();
    test_short_write();
    return check_summary("test_fdio");
}

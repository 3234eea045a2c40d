/*
 * linesplit.c - the I/O limit for bench/run: read a file in 1 MiB chunks and
 * split it into lines with memchr, the way src/source/file.c does, and do
 * nothing else. Prints "LINES BYTES SECONDS" on stdout.
 *
 *   linesplit FILE
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1u << 20)

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: linesplit FILE\n");
        return 2;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    char *buf = malloc(2 * CHUNK);
    size_t start = 0, end = 0;
    unsigned long long lines = 0, bytes = 0, sum_len = 0;
    for (;;) {
        if (start > 0) { /* keep the partial line, as file.c does */
            memmove(buf, buf + start, end - start);
            end -= start;
            start = 0;
        }
        ssize_t n = read(fd, buf + end, 2 * CHUNK - end > CHUNK ? CHUNK : 2 * CHUNK - end);
        if (n < 0) {
            perror("read");
            return 1;
        }
        if (n == 0) break;
        end += (size_t)n;
        bytes += (size_t)n;
        char *nl;
        while ((nl = memchr(buf + start, '\n', end - start)) != NULL) {
            sum_len += (size_t)(nl - (buf + start)); /* keep the loop honest */
            start = (size_t)(nl - buf) + 1;
            lines++;
        }
    }
    if (start < end) lines++;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%llu %llu %.6f %llu\n", lines, bytes, s, sum_len);
    close(fd);
    free(buf);
    return 0;
}

/*
 * secret.c - @file: and @env: references to secrets (see secret.h).
 *
 * A secret file that is empty, or is a directory, is refused rather than
 * read as an empty password: an empty password is never what was meant, and
 * the server's "authentication failed" would not say which file was wrong.
 */
#include "common/secret.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/xalloc.h"

/* volatile so that the wipe is not optimised away before free() */
static void wipe_free(char *s, size_t n)
{
    for (volatile char *p = s; p < s + n; p++) *p = 0;
    free(s);
}

int secret_read_file(const char *path, char **out, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot read secret file %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "secret file %s is a directory, not a file", path);
        close(fd);
        return -1;
    }
    char *s = xmalloc(SECRET_MAX_BYTES + 1);
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, s + n, SECRET_MAX_BYTES + 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            snprintf(err, errlen, "cannot read secret file %s: %s", path, strerror(errno));
            close(fd);
            wipe_free(s, n);
            return -1;
        }
        if (r == 0 || (n += (size_t)r) > SECRET_MAX_BYTES) break;
    }
    close(fd);
    if (n > SECRET_MAX_BYTES) {
        snprintf(err, errlen, "secret file %s is larger than %d bytes", path, SECRET_MAX_BYTES);
        wipe_free(s, n);
        return -1;
    }
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r')) n--;
    s[n] = '\0';
    if (n == 0) {
        snprintf(err, errlen, "secret file %s is empty", path);
        secret_free(s);
        return -1;
    }
    if (strlen(s) != n) {
        snprintf(err, errlen, "secret file %s contains a NUL byte", path);
        wipe_free(s, n);
        return -1;
    }
    *out = xstrndup(s, n); /* a copy, so that the large buffer is wiped, not moved */
    wipe_free(s, n);
    return 0;
}

int secret_resolve(const char *value, char **out, char *err, size_t errlen)
{
    if (strncmp(value, "@file:", 6) == 0) {
        if (!value[6]) {
            snprintf(err, errlen, "@file: names no file");
            return -1;
        }
        return secret_read_file(value + 6, out, err, errlen) ? -1 : 1;
    }
    if (strncmp(value, "@env:", 5) == 0) {
        const char *v = value[5] ? getenv(value + 5) : NULL;
        if (!v || !*v) {
            snprintf(err, errlen, "environment variable %s is %s", value[5] ? value + 5 : "''",
                     v ? "empty" : "not set");
            return -1;
        }
        *out = xstrdup(v);
        return 1;
    }
    return 0;
}

int secret_key_is_sensitive(const char *key, size_t keylen)
{
    static const char *const words[] = {"password", "secret", "token", "key.pem",
                                        "sasl.oauthbearer.config", "credential"};
    for (size_t w = 0; w < sizeof words / sizeof *words; w++) {
        size_t wl = strlen(words[w]);
        for (size_t i = 0; i + wl <= keylen; i++)
            if (strncasecmp(key + i, words[w], wl) == 0) return 1;
    }
    return 0;
}

void secret_free(char *s)
{
    if (s) wipe_free(s, strlen(s));
}

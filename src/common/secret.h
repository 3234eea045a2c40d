/*
 * secret.h - secrets kept off the command line: the one way any KEY=VALUE
 * setting (-X sasl.password=, --sink-opt password=, ...) names where its value
 * is instead of holding it.
 *
 *   @file:PATH   the file's contents, trailing newlines removed (Docker and
 *                Kubernetes secrets, systemd LoadCredential=)
 *   @env:NAME    the environment variable NAME
 *
 * A value that starts otherwise is taken as it is.
 */
#ifndef SESSIONIZER_SECRET_H
#define SESSIONIZER_SECRET_H

#include <stddef.h>

/* Largest secret file read: a PEM key fits many times over. */
#define SECRET_MAX_BYTES (64 * 1024)

/* Returns 1 and *out (malloc'd) when value is a reference, 0 when it is not
 * (*out untouched), or -1 with err saying what is wrong (a missing, unreadable,
 * empty or oversized file, a directory, an unset or empty variable). */
int secret_resolve(const char *value, char **out, char *err, size_t errlen);

/* Reads a secret file (as @file:PATH does). Returns 0 or -1 with err. */
int secret_read_file(const char *path, char **out, char *err, size_t errlen);

/* Whether a setting's key names a secret (password, secret, token, private
 * key), whose inline value must never be printed. */
int secret_key_is_sensitive(const char *key, size_t keylen);

/* Overwrites and frees a secret. */
void secret_free(char *s);

#endif

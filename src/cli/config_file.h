/*
 * config_file.h - the configuration file's syntax: YAML, read with libyaml.
 *
 * The file is one mapping from option names to values, the same names as the
 * command line's long options without "--":
 *
 *   source: kafka://broker1:9092/visits
 *   gap: 50s
 *   source-opt:                    # a repeatable KEY=VALUE option: a mapping
 *     sasl.password: "@file:/run/secrets/kafka"
 *   sink-opt: [table=sessions]     # or a list of KEY=VALUE strings
 *
 * This file knows the syntax only; which names exist and what their values
 * mean is the option table's business (options.c).
 */
#ifndef SESSIONIZER_CLI_CONFIG_FILE_H
#define SESSIONIZER_CLI_CONFIG_FILE_H

#include <stddef.h>

#include "common/buf.h"

/* Largest configuration file read. */
#define CONFIG_FILE_MAX_BYTES (1 << 20)

typedef enum config_kind {
    CONFIG_SCALAR, /* name: value */
    CONFIG_ITEM,   /* one KEY=VALUE of a mapping or list under name */
} config_kind;

/* Called for each value in file order; a non-zero return stops the parse and
 * is returned (err filled by the callback). line counts from 1. */
typedef int (*config_file_cb)(void *ctx, const char *name, const char *value, config_kind kind,
                              int line, char *err, size_t errlen);

/* Parses data (need not be NUL-terminated). Returns 0, the callback's
 * non-zero return, or -1 with err ("line N: ...") for a syntax or shape
 * error. */
int config_file_parse(const unsigned char *data, size_t len, config_file_cb cb, void *ctx,
                      char *err, size_t errlen);

/* Reads path whole (at most CONFIG_FILE_MAX_BYTES). Returns 0 or -1 with err. */
int config_file_read(const char *path, buf *out, char *err, size_t errlen);

/* Appends s as a YAML double-quoted scalar, which reads back as s. */
void config_file_quote(buf *b, const char *s);

#endif

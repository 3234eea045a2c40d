/*
 * options.h - the command line's typed option table (in the manner of Fluent
 * Bit's config_map): one entry per option gives its name, type, default,
 * bounds, help text and where its value is stored. The parser, the --help
 * text, the environment variables and the configuration file are all derived
 * from that table, so an option is added by adding one entry (options.c).
 */
#ifndef SESSIONIZER_CLI_OPTIONS_H
#define SESSIONIZER_CLI_OPTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/buf.h"
#include "job/job.h"

typedef enum opt_type {
    OPT_STRING,   /* const char * */
    OPT_BOOL,     /* int 0/1; "--NAME" sets it, "--no-NAME" clears it */
    OPT_COUNT,    /* unsigned integer of the field's width; 100k, 2M, 4GiB */
    OPT_BYTES,    /* as OPT_COUNT, shown as KiB/MiB/GiB */
    OPT_DURATION, /* int64_t in units of `scale` microseconds; 50s, 500ms, 2m */
    OPT_ENUM,     /* int, the index of the value among `choices` */
    OPT_LIST,     /* repeatable KEY=VALUE: a NULL-terminated const char *const * */
} opt_type;

/* Everything the command line sets: the job's configuration and the few
 * settings that only the CLI reads. */
typedef struct cli_options {
    job_config job;
    int quiet;              /* no progress and no summary */
    int progress;           /* progress lines even when stderr is not a terminal */
    int log_format;         /* enum log_format */
    const char *metrics_listen; /* HOST:PORT of the metrics and health endpoint; NULL: none */
    uint64_t ready_max_lag; /* /readyz: records behind at most */
    const char *config;     /* --config FILE */
    /* The record layout as given; resolved into job.records after parsing. */
    const char *const *fields; /* --field NAME=POINTER */
    int time_format;           /* index in time_format order (record/mapping.h) */
    /* --scale-out (task/scaleout.h) */
    int scale_out;
    int keyed_input;
    unsigned repartition_partitions;
    const char *state;
    int user_type;             /* 0 int, 1 string */
    int time_from;             /* 0 the record, 1 the Kafka timestamp */
    int user_from;             /* 0 the record, 1 the Kafka key */
    const char *columns;       /* --columns a,b */
    struct opt_state *st;   /* the parser's bookkeeping (owned strings, lists, origins) */
} cli_options;

typedef struct opt_def {
    const char *name;     /* --NAME; SESSIONIZER_NAME in the environment; NAME in a config */
    char short_name;      /* -c, or 0 */
    opt_type type;
    const char *arg;      /* the value's name in --help ("DURATION"); NULL for bools */
    const char *def;      /* default, parsed like a user's value; NULL: none */
    uint64_t min, max;    /* bounds of counts, and of durations in microseconds */
    int64_t scale;        /* durations: microseconds per stored unit (1 or 1000) */
    const char *const *choices; /* enums: NULL-terminated */
    size_t off, size;     /* where in cli_options the value goes */
    const char *help;
} opt_def;

/* The table, terminated by an entry whose name is NULL. */
extern const opt_def cli_option_table[];

typedef enum options_mode {
    OPTIONS_RUN,   /* for job_run: --source and --sink required, secrets resolved */
    OPTIONS_PRINT, /* for options_print: nothing required, secrets left as references */
} options_mode;

/* Builds the configuration from, in increasing precedence: the defaults, the
 * YAML file of --config (or of SESSIONIZER_CONFIG), the environment
 * (SESSIONIZER_GAP=50s for --gap) and argv[first..]. Repeatable KEY=VALUE
 * options merge per key with the same precedence; their @file:/@env: values
 * are secrets read in OPTIONS_RUN mode (common/secret.h).
 * Returns 0 when *o is ready, 1 when --help was printed, or 2 after printing
 * a usage error. Call options_free() in every case. */
int options_parse(cli_options *o, int argc, char **argv, int first, options_mode mode);
void options_free(cli_options *o);

/* The defaults alone (options_parse starts with them). */
void options_defaults(cli_options *o);

/* Applies a YAML configuration held in memory, as --config does with a file
 * (path only names it in messages). Returns 0 or -1 with err. */
int options_load_yaml(cli_options *o, const unsigned char *data, size_t len, const char *path,
                      char *err, size_t errlen);

/* The effective configuration as a YAML configuration file, inline secrets
 * replaced by "<redacted>"; with origins, where each value came from in a
 * comment. */
void options_print(const cli_options *o, buf *out, int origins);

/* The whole --help text, options included. */
void options_help(buf *out);

/* The man page sessionizer(1), in roff, from the same table. */
void options_man(buf *out);

/* MESSAGE and a hint to --help as an error line in the log; returns 2. */
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif

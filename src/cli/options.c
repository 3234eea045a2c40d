/*
 * options.c - the option table of "sessionizer run" and its parser.
 *
 * TO ADD AN OPTION, ADD ONE ENTRY TO cli_option_table BELOW (and the field it
 * is stored in, in job_config or cli_options). Its --NAME and -X forms, its
 * check against the bounds, its line in --help, its default and its error
 * messages all come from that entry; nothing else in the CLI needs to change.
 *
 * Values of every type go through one parser each: durations and counts
 * through common/units (the one spelling of "50s" and "1MiB" in the
 * program), enums through their choices, bools through parse_bool. Where a
 * value comes from (the command line, later the environment or a config
 * file) only changes how an error names it.
 */
#include "cli/options.h"

#include <assert.h>
#include <ctype.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/config_file.h"
#include "common/log.h"
#include "common/secret.h"
#include "common/testenv.h"
#include "common/units.h"
#include "common/xalloc.h"
#include "deadletter/deadletter.h"
#include "record/mapping.h"
#include "sink/sink.h"

extern char **environ;

/* Longest a time can be without the engine's arithmetic overflowing. */
#define HUNDRED_YEARS_US 3155760000000000ULL
#define MAX_LIST 256 /* values of one repeatable option */
#define MAX_OPTS 64
_Static_assert(TIME_EPOCH_NS == 4, "time_format_choices follows enum time_format");
/* What stands for a secret in printed configurations; refused as a value. */
#define REDACTED "<redacted>"

/* The field f of cli_options, checked at compile time to have the C type the
 * option's type stores (a mismatch is "no association" in _Generic). */
#define CLI_FIELD(f) ((cli_options *)0)->f
#define AT_STRING(f) .off = _Generic(CLI_FIELD(f), const char *: offsetof(cli_options, f)), \
                     .size = sizeof(CLI_FIELD(f))
#define AT_INT(f) .off = _Generic(CLI_FIELD(f), int: offsetof(cli_options, f)), \
                  .size = sizeof(CLI_FIELD(f))
#define AT_UNSIGNED(f)                                                                  \
    .off = _Generic(CLI_FIELD(f), unsigned: offsetof(cli_options, f),                   \
                    unsigned long: offsetof(cli_options, f),                            \
                    unsigned long long: offsetof(cli_options, f)),                      \
    .size = sizeof(CLI_FIELD(f))
#define AT_I64(f) .off = _Generic(CLI_FIELD(f), int64_t: offsetof(cli_options, f)), \
                  .size = sizeof(CLI_FIELD(f))
#define AT_LIST(f) .off = _Generic(CLI_FIELD(f), const char *const *: offsetof(cli_options, f)), \
                   .size = sizeof(CLI_FIELD(f))

static const char *const start_choices[] = {"earliest", "latest", NULL};
/* In the order of enum time_format (record/mapping.h). */
static const char *const time_format_choices[] = {"iso8601", "epoch_s", "epoch_ms", "epoch_us",
                                                  "epoch_ns", NULL};
/* In the order of enum log_format. */
static const char *const log_format_choices[] = {"text", "json", NULL};
_Static_assert(LOG_FORMAT_TEXT == 0 && LOG_FORMAT_JSON == 1, "log_format_choices' order");
static const char *const user_type_choices[] = {"int", "string", NULL};
static const char *const time_from_choices[] = {"record", "kafka", NULL};
static const char *const user_from_choices[] = {"record", "key", NULL};

const opt_def cli_option_table[] = {
    {.name = "config", .short_name = 'c', .type = OPT_STRING, .arg = "FILE", AT_STRING(config),
     .help = "read options from this YAML file first (command line over environment over "
             "file; see CONFIGURATION)"},
    {.name = "source", .type = OPT_STRING, .arg = "URI", AT_STRING(job.source_uri),
     .help = "where the visits come from (required; see Sources)"},
    {.name = "sink", .type = OPT_STRING, .arg = "URI", AT_STRING(job.sink_uri),
     .help = "where closed sessions go (required; see Sinks)"},
    {.name = "checkpoint", .type = OPT_STRING, .arg = "DIR", AT_STRING(job.checkpoint_dir),
     .help = "durable state; a restart resumes from it (default: none, start at the beginning "
             "of the input)"},
    {.name = "gap", .type = OPT_DURATION, .arg = "DURATION", .def = "50s", .min = 1,
     .max = HUNDRED_YEARS_US, .scale = 1, AT_I64(job.engine.gap_us),
     .help = "session gap G"},
    {.name = "lateness", .type = OPT_DURATION, .arg = "DURATION", .def = "10s", .min = 0,
     .max = HUNDRED_YEARS_US, .scale = 1, AT_I64(job.engine.lateness_us),
     .help = "allowed lateness L behind the watermark"},
    {.name = "max-future", .type = OPT_DURATION, .arg = "DURATION", .def = "1h", .min = 1000000,
     .max = HUNDRED_YEARS_US, .scale = 1, AT_I64(job.engine.max_future_us),
     .help = "how far a visit's event time may be ahead of its Kafka record's timestamp "
             "(further is dead-lettered: future); in a file, a jump further ahead waits for "
             "the next visit to confirm it"},
    {.name = "until-end", .type = OPT_BOOL, .def = "false", AT_INT(job.until_end),
     .help = "stop at the end of the input and close every session"},
    {.name = "field", .type = OPT_LIST, .arg = "NAME=POINTER", AT_LIST(fields),
     .help = "where a field of the record is, as a JSON Pointer (repeatable): user=/userId, "
             "page=/context/url, time=/ts (default /user_id, /page, /event_time)"},
    {.name = "time-format", .type = OPT_ENUM, .arg = "FORMAT", .def = "iso8601",
     .choices = time_format_choices, AT_INT(time_format),
     .help = "how the event time is written: iso8601, or epoch_s, epoch_ms, epoch_us, epoch_ns "
             "(a JSON number or numeric string)"},
    {.name = "dlq", .type = OPT_STRING, .arg = "URI", AT_STRING(job.dlq_uri),
     .help = "where bad and late records go, with their reason (see Dead-letter outputs); "
             "default DIR/deadletter.jsonl of --checkpoint DIR, required without it"},
    {.name = "user-type", .type = OPT_ENUM, .arg = "int|string", .def = "int",
     .choices = user_type_choices, AT_INT(user_type),
     .help = "user ids are JSON integers (signed 64-bit) or strings (UUIDs, emails: 1 to 512 "
             "bytes); string users get a text user_id column"},
    {.name = "time-from", .type = OPT_ENUM, .arg = "record|kafka", .def = "record",
     .choices = time_from_choices, AT_INT(time_from),
     .help = "the event time is in the record (--field time=) or is the Kafka record's "
             "timestamp"},
    {.name = "user-from", .type = OPT_ENUM, .arg = "record|key", .def = "record",
     .choices = user_from_choices, AT_INT(user_from),
     .help = "the user is in the record (--field user=) or is the Kafka message key"},
    {.name = "columns", .type = OPT_STRING, .arg = "LIST", AT_STRING(columns),
     .help = "more session columns in every sink, comma-separated: session_start, session_end, "
             "visit_count, duration (default: none)"},
    {.name = "max-pages", .type = OPT_COUNT, .arg = "N", .def = "10000", .min = 1,
     .max = 100000000, AT_UNSIGNED(job.engine.max_pages),
     .help = "pages kept per session, earliest first"},
    {.name = "max-session-bytes", .type = OPT_BYTES, .arg = "N", .def = "8MiB", .min = 1,
     .max = ENGINE_MAX_SESSION_BYTES, AT_UNSIGNED(job.engine.max_session_bytes),
     .help = "page text kept per session, earliest first (the default fits every sink's "
             "largest row)"},
    {.name = "max-record-bytes", .type = OPT_BYTES, .arg = "N", .def = "1MiB", .min = 64,
     .max = 1u << 30, AT_UNSIGNED(job.source.max_record_bytes),
     .help = "longer records are dead-lettered"},
    {.name = "commit-every", .type = OPT_COUNT, .arg = "N", .def = "100000", .min = 0,
     .max = UINT64_MAX, AT_UNSIGNED(job.commit_every),
     .help = "commit after N records (0: only by time)"},
    {.name = "commit-interval", .type = OPT_DURATION, .arg = "DUR", .def = "1s", .min = 0,
     .max = INT64_MAX, .scale = 1000, AT_I64(job.commit_interval_ms),
     .help = "and at least this often (0: only by count)"},
    {.name = "memory-limit", .type = OPT_BYTES, .arg = "N", .def = "0", .min = 0,
     .max = UINT64_MAX, AT_UNSIGNED(job.memory_limit),
     .help = "resident memory budget: to stay under it the least recently visited users' "
             "open sessions go to a file on disk, read back when needed; past it all the same "
             "the job commits and stops, its checkpoint intact (0: half of the machine's memory "
             "or of its cgroup's limit)"},
    {.name = "sink-opt", .type = OPT_LIST, .arg = "KEY=VALUE", AT_LIST(job.sink.props),
     .help = "sink setting (repeatable), e.g. consistency=ONE"},
    {.name = "create-schema", .type = OPT_BOOL, .def = "true", AT_INT(job.sink.create_schema),
     .help = "create the sink's table or keyspace when missing (--no-create-schema: never)"},
    {.name = "source-opt", .short_name = 'X', .type = OPT_LIST, .arg = "KEY=VALUE",
     AT_LIST(job.source.props),
     .help = "source property (repeatable), e.g. librdkafka settings"},
    {.name = "group", .type = OPT_STRING, .arg = "ID", .def = "sessionizer",
     AT_STRING(job.source.group), .help = "Kafka consumer group"},
    {.name = "scale-out", .type = OPT_BOOL, .def = "false", AT_INT(scale_out),
     .help = "share a Kafka topic with the group's other instances (docs/scaling.md)"},
    {.name = "keyed-input", .type = OPT_BOOL, .def = "false", AT_INT(keyed_input),
     .help = "--scale-out: the input is keyed by user (all of a user's visits in one "
             "partition), so a task per source partition and no repartition topic"},
    {.name = "repartition-partitions", .type = OPT_COUNT, .arg = "N", .def = "4", .min = 1,
     .max = 10000, AT_UNSIGNED(repartition_partitions),
     .help = "--scale-out: partitions of the internal topic GROUP-repartition"},
    {.name = "state", .type = OPT_STRING, .arg = "URI", AT_STRING(state),
     .help = "--scale-out: PostgreSQL holding the session tasks' state (default: the sink)"},
    {.name = "start", .type = OPT_ENUM, .arg = "earliest|latest", .def = "earliest",
     .choices = start_choices, AT_INT(job.source.start_latest),
     .help = "where a run without checkpoint starts"},
    {.name = "progress", .type = OPT_BOOL, .def = "false", AT_INT(progress),
     .help = "progress lines on stderr even when it is not a terminal"},
    {.name = "stats", .type = OPT_BOOL, .def = "false", AT_INT(job.latency_stats),
     .help = "measure and print the latency from a session's close to the sink's "
             "acknowledgement (p50, p99, max), the bytes the checkpoint wrote, and the "
             "job's peak resident memory against --memory-limit"},
    {.name = "quiet", .short_name = 'q', .type = OPT_BOOL, .def = "false", AT_INT(quiet),
     .help = "no progress and no summary"},
    {.name = "metrics-listen", .type = OPT_STRING, .arg = "HOST:PORT", AT_STRING(metrics_listen),
     .help = "serve /metrics (Prometheus), /healthz and /readyz there, e.g. 127.0.0.1:9464 "
             "(default: none)"},
    {.name = "ready-max-lag", .type = OPT_COUNT, .arg = "N", .def = "10000", .min = 0,
     .max = INT64_MAX, AT_UNSIGNED(ready_max_lag),
     .help = "/readyz: ready only with at most N records behind the source's end"},
    {.name = "log-format", .type = OPT_ENUM, .arg = "text|json", .def = "text",
     .choices = log_format_choices, AT_INT(log_format),
     .help = "log lines on stderr as text or as one JSON object per line"},
    {.name = NULL},
};

#define N_OPTS (sizeof cli_option_table / sizeof *cli_option_table - 1)
_Static_assert(N_OPTS <= MAX_OPTS, "raise MAX_OPTS");

typedef enum opt_origin { ORIGIN_DEFAULT, ORIGIN_FILE, ORIGIN_ENV, ORIGIN_CLI } opt_origin;

typedef struct list_item {
    const char *value; /* KEY=VALUE as given (a secret's reference, not the secret) */
    unsigned char origin;
} list_item;

typedef struct opt_list {
    list_item *items; /* in the order given: file, environment, command line */
    size_t n;
    const char **job; /* what the job sees: one per key, secrets resolved, NULL-terminated */
} opt_list;

struct opt_state {
    char **owned; /* every string a value points into */
    size_t n_owned, cap_owned;
    char **secrets; /* resolved KEY=SECRET strings, wiped when freed */
    size_t n_secrets;
    opt_list lists[MAX_OPTS];
    unsigned char origin[MAX_OPTS]; /* opt_origin of each option's value */
};

int usage_error(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_error("sessionizer", "%s; try 'sessionizer --help'", msg);
    return 2;
}

/* The buffer's bytes as a C string (the NUL is kept past len). */
static const char *cstr(buf *b)
{
    buf_append_byte(b, '\0');
    b->len--;
    return (const char *)b->data;
}

static const char *own(cli_options *o, const char *s)
{
    struct opt_state *st = o->st;
    if (st->n_owned == st->cap_owned) {
        st->cap_owned = st->cap_owned ? 2 * st->cap_owned : 32;
        st->owned = xrealloc(st->owned, st->cap_owned * sizeof *st->owned);
    }
    return st->owned[st->n_owned++] = xstrdup(s);
}

/* "50s" for 50000000: the largest unit that divides the value exactly. */
static void format_duration(buf *b, uint64_t us)
{
    static const struct { const char *unit; uint64_t us; } units[] = {
        {"d", 86400000000ULL}, {"h", 3600000000ULL}, {"m", 60000000}, {"s", 1000000},
        {"ms", 1000}, {"us", 1}};
    for (size_t i = 0; i < sizeof units / sizeof *units; i++)
        if (us % units[i].us == 0 && (us > 0 || units[i].us == 1000000)) {
            buf_printf(b, "%llu%s", (unsigned long long)(us / units[i].us), units[i].unit);
            return;
        }
}

/* "100M", "1GiB": the largest suffix that divides the value exactly. */
static void format_count(buf *b, uint64_t v, int bytes)
{
    static const struct { const char *unit; uint64_t mul; } counts[] = {
        {"G", 1000000000}, {"M", 1000000}, {"k", 1000}},
        sizes[] = {{"GiB", 1u << 30}, {"MiB", 1u << 20}, {"KiB", 1u << 10}};
    for (size_t i = 0; i < 3 && v > 0; i++) {
        uint64_t mul = bytes ? sizes[i].mul : counts[i].mul;
        if (v % mul == 0) {
            buf_printf(b, "%llu%s", (unsigned long long)(v / mul),
                       bytes ? sizes[i].unit : counts[i].unit);
            return;
        }
    }
    buf_printf(b, "%llu", (unsigned long long)v);
}

static const char *const origin_names[] = {"default", "config file", "environment",
                                           "command line"};

/* Checks value against option i and stores it. `where` names the value's
 * origin in messages ("--gap", "SESSIONIZER_GAP", "gap (FILE:3)"). Returns 0,
 * or -1 with err. */
static int opt_set(cli_options *o, size_t i, const char *value, const char *where,
                   opt_origin origin, char *err, size_t errlen)
{
    const opt_def *d = &cli_option_table[i];
    char *field = (char *)o + d->off;
    if (strstr(value, REDACTED)) {
        snprintf(err, errlen, "%s holds %s, a secret left out by 'sessionizer config': give the "
                 "secret as @file:PATH or @env:NAME in a KEY=VALUE option (e.g. --sink-opt "
                 "password=@file:/run/secrets/db, -X sasl.password=@env:KAFKA_PASSWORD)", where,
                 REDACTED);
        return -1;
    }
    o->st->origin[i] = (unsigned char)origin;
    switch (d->type) {
    case OPT_STRING:
        *(const char **)field = own(o, value);
        return 0;
    case OPT_BOOL: {
        int v;
        if (parse_bool(value, &v)) {
            snprintf(err, errlen, "invalid %s '%s' (true or false)", where, value);
            return -1;
        }
        *(int *)field = v;
        return 0;
    }
    case OPT_ENUM: {
        for (int k = 0; d->choices[k]; k++)
            if (strcmp(value, d->choices[k]) == 0) {
                *(int *)field = k;
                return 0;
            }
        buf b;
        buf_init(&b);
        for (int k = 0; d->choices[k]; k++)
            buf_printf(&b, "%s'%s'", k == 0 ? "" : d->choices[k + 1] ? ", " : " or ",
                       d->choices[k]);
        snprintf(err, errlen, "%s takes %s, not '%s'", where, cstr(&b), value);
        buf_free(&b);
        return -1;
    }
    case OPT_COUNT:
    case OPT_BYTES: {
        uint64_t v;
        if (parse_count(value, &v) || v < d->min || v > d->max) {
            buf b;
            buf_init(&b);
            if (d->max == UINT64_MAX) {
                buf_append_str(&b, "a count such as 5000 or 100k");
            } else {
                format_count(&b, d->min, d->type == OPT_BYTES);
                buf_append_str(&b, " to ");
                format_count(&b, d->max, d->type == OPT_BYTES);
            }
            snprintf(err, errlen, "invalid %s '%s' (%s)", where, value, cstr(&b));
            buf_free(&b);
            return -1;
        }
        if (d->size == sizeof(uint32_t)) *(uint32_t *)field = (uint32_t)v;
        else *(uint64_t *)field = v;
        return 0;
    }
    case OPT_DURATION: {
        int64_t us;
        if (parse_duration_us(value, &us) || (uint64_t)us < d->min || (uint64_t)us > d->max) {
            buf b;
            buf_init(&b);
            buf_append_str(&b, "a duration");
            if (d->max != INT64_MAX) {
                buf_append_str(&b, " from ");
                format_duration(&b, d->min);
                buf_append_str(&b, " to ");
                format_duration(&b, d->max);
            }
            snprintf(err, errlen, "invalid %s '%s' (%s; examples: 50s, 500ms, 2m)", where, value,
                     cstr(&b));
            buf_free(&b);
            return -1;
        }
        *(int64_t *)field = us / d->scale;
        return 0;
    }
    case OPT_LIST: {
        const char *eq = strchr(value, '=');
        if (!eq || eq == value) {
            snprintf(err, errlen, "%s: '%s' is not KEY=VALUE", where, value);
            return -1;
        }
        opt_list *l = &o->st->lists[i];
        if (l->n >= MAX_LIST) {
            snprintf(err, errlen, "too many %s values at '%s' (at most %d)", where, value,
                     MAX_LIST);
            return -1;
        }
        l->items = xrealloc(l->items, (l->n + 1) * sizeof *l->items);
        l->items[l->n++] = (list_item){own(o, value), (unsigned char)origin};
        return 0;
    }
    }
    assert(!"unknown option type");
    return -1;
}

static void check_table(void)
{
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt_def *d = &cli_option_table[i];
        assert(d->help && d->off + d->size <= sizeof(cli_options));
        assert((d->type == OPT_BOOL) == (d->arg == NULL));
        assert(d->type != OPT_ENUM || (d->choices && d->choices[0]));
        assert(d->type != OPT_DURATION || (d->scale >= 1 && d->size == sizeof(int64_t)));
        assert(!(d->type == OPT_COUNT || d->type == OPT_BYTES) ||
               (d->min <= d->max && (d->size == sizeof(uint64_t) ||
                                     (d->size == sizeof(uint32_t) && d->max <= UINT32_MAX))));
        assert(strlen(d->name) < 40);
        for (size_t k = 0; k < i; k++)
            assert(strcmp(d->name, cli_option_table[k].name) != 0 &&
                   (!d->short_name || d->short_name != cli_option_table[k].short_name));
        (void)d;
    }
}

static size_t find_option(const char *name)
{
    size_t i = 0;
    while (i < N_OPTS && strcmp(cli_option_table[i].name, name) != 0) i++;
    return i;
}

/* SESSIONIZER_COMMIT_INTERVAL for commit-interval. */
static void env_name(char *out, size_t outlen, const char *name)
{
    size_t n = (size_t)snprintf(out, outlen, "SESSIONIZER_%s", name);
    for (char *p = out + 12; p < out + n && p < out + outlen; p++)
        *p = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
}

/* ---- the configuration file -------------------------------------------- */

typedef struct file_ctx {
    cli_options *o;
    const char *path;
    int line[MAX_OPTS]; /* where a single-valued option was set, to refuse a second time */
} file_ctx;

static int on_file_value(void *ctx, const char *name, const char *value, config_kind kind,
                         int line, char *err, size_t errlen)
{
    file_ctx *f = ctx;
    size_t i = find_option(name);
    if (i == N_OPTS || i == find_option("config")) {
        snprintf(err, errlen, "%s:%d: %s '%s' (the names are those of the long options, "
                 "e.g. gap: 50s)", f->path, line, i == N_OPTS ? "unknown option" :
                 "a configuration file cannot name another:", name);
        return -1;
    }
    const opt_def *d = &cli_option_table[i];
    if (d->type != OPT_LIST && kind != CONFIG_SCALAR) {
        snprintf(err, errlen, "%s:%d: %s takes one value, not a list", f->path, line, name);
        return -1;
    }
    if (d->type != OPT_LIST && f->line[i]) {
        snprintf(err, errlen, "%s:%d: %s is already set on line %d", f->path, line, name,
                 f->line[i]);
        return -1;
    }
    f->line[i] = line;
    char where[PATH_MAX + 64];
    snprintf(where, sizeof where, "%s (%s:%d)", name, f->path, line);
    return opt_set(f->o, i, value, where, ORIGIN_FILE, err, errlen);
}

int options_load_yaml(cli_options *o, const unsigned char *data, size_t len, const char *path,
                      char *err, size_t errlen)
{
    file_ctx f = {.o = o, .path = path};
    char e[1024];
    int rc = config_file_parse(data, len, on_file_value, &f, e, sizeof e);
    int line, skip = 0;
    if (rc == -1 && sscanf(e, "line %d: %n", &line, &skip) == 1 && skip > 0)
        snprintf(err, errlen, "%s:%d: %s", path, line, e + skip);
    else if (rc)
        snprintf(err, errlen, "%s", e);
    return rc ? -1 : 0;
}

static int load_file(cli_options *o, const char *path, char *err, size_t errlen)
{
    buf b;
    buf_init(&b);
    int rc = config_file_read(path, &b, err, errlen);
    if (rc == 0) rc = options_load_yaml(o, b.data, b.len, path, err, errlen);
    buf_free(&b);
    return rc;
}

/* ---- the environment ----------------------------------------------------- */

static int load_env(cli_options *o, char *err, size_t errlen)
{
    for (size_t i = 0; i < N_OPTS; i++) {
        if (i == find_option("config")) continue; /* read before the file */
        char name[64];
        env_name(name, sizeof name, cli_option_table[i].name);
        const char *v = getenv(name);
        if (!v || !*v) continue; /* an empty variable is an unset one (EnvironmentFile=) */
        if (cli_option_table[i].type != OPT_LIST) {
            if (opt_set(o, i, v, name, ORIGIN_ENV, err, errlen)) return -1;
            continue;
        }
        /* A list: one KEY=VALUE a line (values may hold commas and spaces). */
        for (const char *p = v; *p;) {
            size_t n = strcspn(p, "\n");
            if (n > 0) {
                char *item = xstrndup(p, n);
                int rc = opt_set(o, i, item, name, ORIGIN_ENV, err, errlen);
                free(item);
                if (rc) return -1;
            }
            p += n + (p[n] == '\n');
        }
    }
    /* A misspelt variable would otherwise be ignored without a word; the
     * variables of tests (common/testenv.h) are not misspelt. */
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "SESSIONIZER_", 12) != 0) continue;
        size_t nl = strcspn(*e, "=");
        int known = 0;
        for (size_t i = 0; i < N_OPTS && !known; i++) {
            char name[64];
            env_name(name, sizeof name, cli_option_table[i].name);
            known = strlen(name) == nl && strncmp(name, *e, nl) == 0;
        }
        if (!known && !testenv_known(*e, nl))
            log_warn("sessionizer", "%.*s is not an option's variable (ignored)", (int)nl, *e);
    }
    return 0;
}

/* ---- lists: one value per key, secrets resolved ------------------------- */

static int same_key(const char *a, const char *b)
{
    size_t la = strcspn(a, "="), lb = strcspn(b, "=");
    return la == lb && strncmp(a, b, la) == 0;
}

/* Whether item k of l is overridden by a later one with the same key. */
static int overridden(const opt_list *l, size_t k)
{
    for (size_t j = k + 1; j < l->n; j++)
        if (same_key(l->items[k].value, l->items[j].value)) return 1;
    return 0;
}

/* Builds each list option's array for the job: the last value of each key
 * (the command line's over the environment's over the file's), and with
 * resolve, @file:/@env: references replaced by the secrets they name. */
static int finish_lists(cli_options *o, int resolve, char *err, size_t errlen)
{
    struct opt_state *st = o->st;
    for (size_t i = 0; i < N_OPTS; i++) {
        if (cli_option_table[i].type != OPT_LIST) continue;
        opt_list *l = &st->lists[i];
        if (l->n == 0) continue;
        l->job = xcalloc(l->n + 1, sizeof *l->job);
        size_t n = 0;
        for (size_t k = 0; k < l->n; k++) {
            if (overridden(l, k)) continue;
            const char *kv = l->items[k].value, *eq = strchr(kv, '=');
            char *secret = NULL;
            char e[512];
            int r = resolve ? secret_resolve(eq + 1, &secret, e, sizeof e) : 0;
            if (r < 0) {
                snprintf(err, errlen, "--%s %.*s: %s", cli_option_table[i].name,
                         (int)(eq - kv), kv, e);
                return -1;
            }
            if (r > 0) {
                size_t kl = (size_t)(eq - kv), sl = strlen(secret);
                char *full = xmalloc(kl + 1 + sl + 1);
                memcpy(full, kv, kl + 1);
                memcpy(full + kl + 1, secret, sl + 1);
                secret_free(secret);
                st->secrets = xrealloc(st->secrets, (st->n_secrets + 1) * sizeof *st->secrets);
                st->secrets[st->n_secrets++] = full;
                kv = full;
            }
            l->job[n++] = kv;
        }
        *(const char *const **)((char *)o + cli_option_table[i].off) = l->job;
    }
    return 0;
}

/* ---- the whole: defaults < file < environment < command line ------------ */

/* getopt_long's val for an option: 1000+i sets it, 2000+i is its --no- form. */
enum { VAL_SET = 1000, VAL_UNSET = 2000 };

typedef struct assignment {
    size_t opt;
    const char *value;
    const char *where; /* "--gap" */
} assignment;

void options_defaults(cli_options *o)
{
    check_table();
    memset(o, 0, sizeof *o);
    o->st = xcalloc(1, sizeof *o->st);
    char err[256];
    for (size_t i = 0; i < N_OPTS; i++) {
        int bad = cli_option_table[i].def &&
                  opt_set(o, i, cli_option_table[i].def, "default", ORIGIN_DEFAULT, err, sizeof err);
        assert(!bad && "a default that its own option refuses");
        (void)bad;
    }
}

int options_parse(cli_options *o, int argc, char **argv, int first, options_mode mode)
{
    options_defaults(o);
    char err[PATH_MAX + 1024] = "";

    /* The command line is read whole before anything is applied, so that a
     * --config named anywhere on it is loaded first, under it. */
    struct option longopts[2 * MAX_OPTS + 2];
    char names[MAX_OPTS][48], wheres[MAX_OPTS][48], shorts[MAX_OPTS][3];
    char shortopts[2 * MAX_OPTS + 2];
    size_t nl = 0, ns = 0;
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt_def *d = &cli_option_table[i];
        int arg = d->type == OPT_BOOL ? no_argument : required_argument;
        longopts[nl++] = (struct option){d->name, arg, NULL, VAL_SET + (int)i};
        if (d->type == OPT_BOOL) {
            snprintf(names[i], sizeof names[i], "no-%s", d->name);
            longopts[nl++] = (struct option){names[i], no_argument, NULL, VAL_UNSET + (int)i};
        }
        if (d->short_name) {
            shortopts[ns++] = d->short_name;
            if (arg == required_argument) shortopts[ns++] = ':';
            snprintf(shorts[i], sizeof shorts[i], "-%c", d->short_name);
        }
        snprintf(wheres[i], sizeof wheres[i], "--%s", d->name);
    }
    shortopts[ns++] = 'h';
    shortopts[ns] = '\0';
    longopts[nl++] = (struct option){"help", no_argument, NULL, 'h'};
    longopts[nl] = (struct option){NULL, 0, NULL, 0};

    assignment *cli = xcalloc((size_t)argc + 1, sizeof *cli);
    size_t ncli = 0;
    const char *config = NULL;
    int rc = 0;
    optind = first;
    opterr = 0; /* its messages would not be log lines: usage_error says it below */
    int c;
    while (rc == 0 && (c = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
        size_t i = N_OPTS;
        const char *value = optarg, *where = NULL;
        if (c == 'h') {
            buf b;
            buf_init(&b);
            options_help(&b);
            fwrite(b.data, 1, b.len, stdout);
            buf_free(&b);
            rc = 1;
            break;
        } else if (c >= VAL_SET && c < VAL_SET + (int)N_OPTS) {
            i = (size_t)(c - VAL_SET);
            where = wheres[i];
            if (cli_option_table[i].type == OPT_BOOL) value = "true";
        } else if (c >= VAL_UNSET && c < VAL_UNSET + (int)N_OPTS) {
            i = (size_t)(c - VAL_UNSET);
            where = wheres[i];
            value = "false";
        } else {
            while (i > 0 && cli_option_table[i - 1].short_name != c) i--;
            i = i > 0 && c != '?' ? i - 1 : N_OPTS;
            if (i == N_OPTS) {
                rc = usage_error("invalid option '%s' (unknown, or missing its value)",
                                 argv[optind - 1 < argc ? optind - 1 : argc - 1]);
                break;
            }
            where = shorts[i];
            if (cli_option_table[i].type == OPT_BOOL) value = "true";
        }
        if (i == find_option("config")) config = value;
        cli[ncli++] = (assignment){i, value, where};
    }
    if (rc == 0 && optind < argc) rc = usage_error("unexpected argument '%s'", argv[optind]);

    if (rc == 0 && !config) {
        config = getenv("SESSIONIZER_CONFIG");
        if (config && !*config) config = NULL;
        if (config && opt_set(o, find_option("config"), config, "SESSIONIZER_CONFIG", ORIGIN_ENV,
                              err, sizeof err))
            rc = usage_error("%s", err);
    }
    if (rc == 0 && config && load_file(o, config, err, sizeof err)) rc = usage_error("%s", err);
    if (rc == 0 && load_env(o, err, sizeof err)) rc = usage_error("%s", err);
    for (size_t k = 0; rc == 0 && k < ncli; k++)
        if (opt_set(o, cli[k].opt, cli[k].value, cli[k].where, ORIGIN_CLI, err, sizeof err))
            rc = usage_error("%s", err);
    free(cli);
    if (rc == 0 && finish_lists(o, mode == OPTIONS_RUN, err, sizeof err))
        rc = usage_error("%s", err);
    if (rc) return rc;

    /* The record layout, checked and resolved once. */
    char why[512];
    record_mapping *m = &o->job.records;
    record_mapping_default(m);
    m->time_format = (time_format)o->time_format;
    m->user_type = o->user_type ? USER_STRING : USER_INT;
    m->time_from_kafka = o->time_from;
    m->user_from_key = o->user_from;
    for (size_t k = 0; o->fields && o->fields[k]; k++) {
        if (record_mapping_set_field(m, o->fields[k], why, sizeof why))
            return usage_error("%s", why);
        if ((m->time_from_kafka && strncmp(o->fields[k], "time=", 5) == 0) ||
            (m->user_from_key && strncmp(o->fields[k], "user=", 5) == 0))
            return usage_error("--field %s: that field comes from Kafka (--%s)", o->fields[k],
                               m->user_from_key && o->fields[k][0] == 'u' ? "user-from key"
                                                                          : "time-from kafka");
    }
    if (m->time_from_kafka && m->time_format != TIME_ISO8601)
        return usage_error("%s", "--time-format does not apply with --time-from kafka (the Kafka "
                           "timestamp is epoch milliseconds already)");
    if (record_mapping_check(m, why, sizeof why)) return usage_error("%s", why);
    if ((m->time_from_kafka || m->user_from_key) && o->job.source_uri &&
        strncmp(o->job.source_uri, "kafka:", 6) != 0)
        return usage_error("--%s needs a Kafka source (a file or stdin record has no %s)",
                           m->user_from_key ? "user-from key" : "time-from kafka",
                           m->user_from_key ? "key" : "timestamp");
    o->job.sink.string_users = m->user_type == USER_STRING;
    if (o->columns && sink_parse_columns(o->columns, &o->job.sink.columns, why, sizeof why))
        return usage_error("%s", why);

    /* Settings that follow from others. */
    log_set_format((log_format)o->log_format);
    o->job.source.until_end = o->job.until_end;
    o->job.progress = o->quiet ? 0 : o->progress ? 2 : 1;
    if (mode != OPTIONS_RUN) return 0;
    if (!o->job.source_uri)
        return usage_error("%s", "--source is required (e.g. --source file:visits.jsonl)");
    if (!o->job.sink_uri)
        return usage_error("%s", "--sink is required (e.g. --sink sqlite:sessions.db)");
    if (o->job.commit_every == 0 && o->job.commit_interval_ms == 0)
        return usage_error("%s", "--commit-every and --commit-interval cannot both be 0");
    return 0;
}

void options_free(cli_options *o)
{
    struct opt_state *st = o->st;
    if (!st) return;
    for (size_t i = 0; i < st->n_owned; i++) free(st->owned[i]);
    free(st->owned);
    for (size_t i = 0; i < st->n_secrets; i++) secret_free(st->secrets[i]);
    free(st->secrets);
    for (size_t i = 0; i < N_OPTS; i++) {
        free(st->lists[i].items);
        free(st->lists[i].job);
    }
    free(st);
    o->st = NULL;
}

/* ---- the effective configuration, as a configuration file -------------- */

/* Copies a URI or conninfo with any password in it replaced by REDACTED:
 * "scheme://user:PASSWORD@host" and "password=PASSWORD". */
static void redact_string(buf *b, const char *s)
{
    const char *scheme = strstr(s, "://");
    const char *at = scheme ? strchr(scheme + 3, '@') : NULL;
    const char *colon = at ? memchr(scheme + 3, ':', (size_t)(at - scheme - 3)) : NULL;
    const char *slash = scheme ? strchr(scheme + 3, '/') : NULL;
    if (colon && (!slash || at < slash)) {
        buf_append(b, s, (size_t)(colon + 1 - s));
        buf_append_str(b, REDACTED);
        s = at;
    }
    for (const char *p = s; *p;) {
        if (strncmp(p, "password=", 9) == 0 && (p == s || strchr(" ?&", p[-1]))) {
            buf_append_str(b, "password=" REDACTED);
            p += 9 + strcspn(p + 9, " &");
            continue;
        }
        buf_append_byte(b, (unsigned char)*p++);
    }
}

static void print_value(buf *b, const cli_options *o, size_t i)
{
    const opt_def *d = &cli_option_table[i];
    const char *field = (const char *)o + d->off;
    switch (d->type) {
    case OPT_STRING: {
        buf r;
        buf_init(&r);
        redact_string(&r, *(const char *const *)field);
        config_file_quote(b, cstr(&r));
        buf_free(&r);
        break;
    }
    case OPT_BOOL: buf_append_str(b, *(const int *)field ? "true" : "false"); break;
    case OPT_ENUM: buf_append_str(b, d->choices[*(const int *)field]); break;
    case OPT_COUNT:
    case OPT_BYTES:
        format_count(b, d->size == sizeof(uint32_t) ? *(const uint32_t *)field
                                                    : *(const uint64_t *)field,
                     d->type == OPT_BYTES);
        break;
    case OPT_DURATION:
        format_duration(b, (uint64_t)(*(const int64_t *)field * d->scale));
        break;
    case OPT_LIST: assert(!"lists are printed item by item"); break;
    }
}

void options_print(const cli_options *o, buf *b, int origins)
{
    buf_printf(b, "# sessionizer %s: the effective configuration (command line over\n"
                  "# environment over configuration file over defaults); secrets given inline\n"
                  "# show as %s and must be given again, as @file:PATH or @env:NAME.\n",
               SESSIONIZER_VERSION, REDACTED);
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt_def *d = &cli_option_table[i];
        const char *origin = origin_names[o->st->origin[i]];
        if (i == find_option("config")) {
            if (o->config) {
                buf_append_str(b, "# read from ");
                buf_append_str(b, o->config);
                buf_append_byte(b, '\n');
            }
            continue;
        }
        if (d->type == OPT_LIST) {
            const opt_list *l = &o->st->lists[i];
            size_t shown = 0;
            for (size_t k = 0; k < l->n; k++) {
                if (overridden(l, k)) continue;
                if (shown++ == 0) buf_printf(b, "%s:\n", d->name);
                const char *kv = l->items[k].value, *eq = strchr(kv, '=');
                char *key = xstrndup(kv, (size_t)(eq - kv));
                buf_append_str(b, "  ");
                config_file_quote(b, key);
                buf_append_str(b, ": ");
                int ref = strncmp(eq + 1, "@file:", 6) == 0 || strncmp(eq + 1, "@env:", 5) == 0;
                if (!ref && secret_key_is_sensitive(key, strlen(key))) {
                    config_file_quote(b, REDACTED);
                } else {
                    buf r;
                    buf_init(&r);
                    redact_string(&r, eq + 1);
                    config_file_quote(b, cstr(&r));
                    buf_free(&r);
                }
                if (origins) buf_printf(b, "   # %s", origin_names[l->items[k].origin]);
                buf_append_byte(b, '\n');
                free(key);
            }
            if (!shown) buf_printf(b, "# %s: (none)\n", d->name);
            continue;
        }
        if (d->type == OPT_STRING && !*(const char *const *)((const char *)o + d->off)) {
            buf_printf(b, "# %s: (not set)\n", d->name);
            continue;
        }
        buf_printf(b, "%s: ", d->name);
        print_value(b, o, i);
        if (origins) buf_printf(b, "   # %s", origin);
        buf_append_byte(b, '\n');
    }
}

/* Appends text wrapped at 79 columns, continuation lines indented by indent. */
static void wrap(buf *b, const char *text, size_t col, size_t indent)
{
    const char *p = text;
    while (*p) {
        size_t w = strcspn(p, " ");
        if (col > indent && col + 1 + w > 79) {
            buf_printf(b, "\n%*s", (int)indent, "");
            col = indent;
        } else if (col > indent) {
            buf_append_byte(b, ' ');
            col++;
        }
        buf_append(b, p, w);
        col += w;
        p += w;
        while (*p == ' ') p++;
    }
    buf_append_byte(b, '\n');
}

static void help_options(buf *b)
{
    enum { INDENT = 26 };
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt_def *d = &cli_option_table[i];
        size_t start = b->len;
        buf_append_str(b, "  ");
        if (d->short_name) buf_printf(b, "-%c, ", d->short_name);
        if (d->type == OPT_BOOL && d->def && strcmp(d->def, "true") == 0)
            buf_printf(b, "--[no-]%s", d->name);
        else
            buf_printf(b, "--%s", d->name);
        if (d->arg) buf_printf(b, " %s", d->arg);
        size_t col = b->len - start;
        if (col + 1 > INDENT) {
            buf_printf(b, "\n%*s", INDENT, "");
        } else {
            buf_printf(b, "%*s", (int)(INDENT - col), "");
        }
        buf text;
        buf_init(&text);
        buf_append_str(&text, d->help);
        if (d->def && d->type != OPT_BOOL)
            buf_printf(&text, " (default %s)", d->def);
        else if (d->type == OPT_BOOL && d->def && strcmp(d->def, "true") == 0)
            buf_append_str(&text, " (default on)");
        wrap(b, cstr(&text), INDENT, INDENT);
        buf_free(&text);
    }
}

/* A sink that shares its settings table with an earlier one (postgres:,
 * postgresql:'s other name) is listed with it. */
static int settings_listed_before(size_t i)
{
    for (size_t j = 0; j < i; j++)
        if (sink_registered(j)->settings == sink_registered(i)->settings) return 1;
    return 0;
}

/* "postgresql:, postgres:" */
static void settings_schemes(buf *b, size_t i)
{
    for (size_t k = i; sink_registered(k); k++)
        if (sink_registered(k)->settings == sink_registered(i)->settings)
            buf_printf(b, "%s%s:", k > i ? ", " : "", sink_registered(k)->scheme);
}

/* One setting's text: what it does, and its default. */
static void setting_text(buf *t, const sink_setting *st)
{
    buf_append_str(t, st->help);
    if (st->def) buf_printf(t, " (default %s)", st->def);
}

/* The sinks' --sink-opt settings, from their tables (sink.h), which are also
 * what their parsers accept. */
static void help_sink_settings(buf *b)
{
    enum { INDENT = 26 };
    buf t;
    buf_init(&t);
    for (size_t i = 0; sink_registered(i); i++) {
        if (!sink_registered(i)->settings || settings_listed_before(i)) continue;
        buf_append_str(b, "  ");
        settings_schemes(b, i);
        buf_append_byte(b, '\n');
        for (const sink_setting *st = sink_registered(i)->settings; st->key; st++) {
            size_t start = b->len;
            buf_printf(b, "    %s=%s", st->key, st->value);
            size_t col = b->len - start;
            if (col + 1 > INDENT) buf_printf(b, "\n%*s", INDENT, "");
            else buf_printf(b, "%*s", (int)(INDENT - col), "");
            buf_reset(&t);
            setting_text(&t, st);
            wrap(b, cstr(&t), INDENT, INDENT);
        }
    }
    buf_append_str(b, "  The other sinks take none.\n");
    buf_free(&t);
}

void options_help(buf *b)
{
    buf_append_str(b,
        "usage: sessionizer run --source URI --sink URI [options]\n"
        "       sessionizer config [options]   the effective configuration, as YAML\n"
        "       sessionizer --help | --version | --help-man\n"
        "\n"
        "Groups visits {\"user_id\", \"page\", \"event_time\"} into per-user event-time\n"
        "sessions and upserts each closed session under an id derived only from the\n"
        "input log, so that a replay rewrites the same rows (keyed idempotency).\n"
        "\n"
        "Sources (--source):\n");
    source_usage(b);
    buf_append_str(b, "    -             JSON lines from standard input\n\nSinks (--sink):\n");
    sink_usage(b);
    buf_append_str(b, "\nSink settings (--sink-opt KEY=VALUE, repeatable):\n");
    help_sink_settings(b);
    buf_append_str(b, "\nDead-letter outputs (--dlq):\n");
    deadletter_usage(b);
    buf_append_str(b, "\nOptions:\n");
    help_options(b);
    buf_append_str(b,
        "  -h, --help              this help\n"
        "  -V, --version           the version\n"
        "\n"
        "Durations: 50s, 500ms, 2m, 1h. Counts: 5000, 100k, 2M; sizes: 64KiB, 1MiB.\n"
        "Booleans: --NAME sets one, --no-NAME clears it.\n"
        "Every option can also be set as SESSIONIZER_NAME=VALUE (--max-pages:\n"
        "SESSIONIZER_MAX_PAGES) or in the --config file (max-pages: 500); the command\n"
        "line wins over the environment, which wins over the file. A KEY=VALUE value\n"
        "@file:PATH or @env:NAME is read from there (secrets: -X sasl.password=@file:F).\n"
        "Exit status: 0 ok, 1 the job failed, 2 usage.\n"
        "Documentation: README.md and docs/ (semantics.md for the exact rules).\n");
}

/* ---- the man page, sessionizer(1) ---------------------------------------- */

/* Appends text for roff: '-' as \-, '\' as \e, and a line that would start
 * with a control character guarded by \&. */
static void roff(buf *b, const char *text)
{
    int bol = 1;
    for (const char *p = text; *p; p++) {
        if (bol && (*p == '.' || *p == '\'')) buf_append_str(b, "\\&");
        bol = *p == '\n';
        if (*p == '-') buf_append_str(b, "\\-");
        else if (*p == '\\') buf_append_str(b, "\\e");
        else buf_append_byte(b, (unsigned char)*p);
    }
}

static void roff_buf(buf *b, buf *text) { roff(b, cstr(text)); }

void options_man(buf *b)
{
    buf t;
    buf_init(&t);
    buf_printf(b, ".TH SESSIONIZER 1 \"\" \"sessionizer %s\" \"User Commands\"\n", SESSIONIZER_VERSION);
    buf_append_str(b, ".\\\" Generated by 'sessionizer --help-man' from the option table "
                      "(src/cli/options.c): do not edit.\n");
    buf_append_str(b,
        ".SH NAME\nsessionizer \\- per\\-user event\\-time sessions from a stream of visits\n"
        ".SH SYNOPSIS\n"
        ".B sessionizer run\n\\fB\\-\\-source\\fR \\fIURI\\fR \\fB\\-\\-sink\\fR \\fIURI\\fR "
        "[\\fIoptions\\fR]\n.br\n"
        ".B sessionizer config\n[\\fIoptions\\fR]\n.br\n"
        ".B sessionizer\n\\fB\\-\\-help\\fR | \\fB\\-\\-version\\fR | \\fB\\-\\-help\\-man\\fR\n"
        ".SH DESCRIPTION\n"
        "Groups visits {\"user_id\", \"page\", \"event_time\"} into per\\-user event\\-time "
        "sessions and upserts each closed session under an id derived only from the input "
        "log, so that a replay rewrites the same rows (keyed idempotency). Records that "
        "cannot be used go to a dead\\-letter output with their reason. With "
        "\\fB\\-\\-checkpoint\\fR, a restart resumes where the last commit left off.\n"
        ".SH COMMANDS\n"
        ".TP\n.B run\nRuns the job until the end of the input (with \\fB\\-\\-until\\-end\\fR), "
        "or until SIGINT or SIGTERM, which end it after a final commit.\n"
        ".TP\n.B config\nPrints the effective configuration (defaults, then the "
        "configuration file, the environment and the options, each value's origin in a "
        "comment) as a YAML file that \\fB\\-\\-config\\fR reads back. Inline secrets show "
        "as <redacted>.\n"
        ".SH OPTIONS\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt_def *d = &cli_option_table[i];
        buf_append_str(b, ".TP\n");
        if (d->short_name) buf_printf(b, "\\fB\\-%c\\fR, ", d->short_name);
        int neg = d->type == OPT_BOOL && d->def && strcmp(d->def, "true") == 0;
        buf_append_str(b, neg ? "\\fB\\-\\-\\fR[\\fBno\\-\\fR]\\fB" : "\\fB\\-\\-");
        buf_reset(&t);
        buf_append_str(&t, d->name);
        roff_buf(b, &t);
        buf_append_str(b, "\\fR");
        if (d->arg) {
            buf_reset(&t);
            buf_append_str(&t, d->arg);
            buf_append_str(b, " \\fI");
            roff_buf(b, &t);
            buf_append_str(b, "\\fR");
        }
        buf_append_byte(b, '\n');
        buf_reset(&t);
        buf_append_str(&t, d->help);
        if (d->def && d->type != OPT_BOOL) buf_printf(&t, " (default %s)", d->def);
        else if (neg) buf_append_str(&t, " (default on)");
        char env[64];
        env_name(env, sizeof env, d->name);
        buf_printf(&t, ". Environment: %s.", env);
        roff_buf(b, &t);
        buf_append_byte(b, '\n');
    }
    buf_append_str(b, ".TP\n\\fB\\-h\\fR, \\fB\\-\\-help\\fR\nThe help.\n"
                      ".TP\n\\fB\\-V\\fR, \\fB\\-\\-version\\fR\nThe version.\n");
    static const struct { const char *title; void (*list)(buf *); } uris[] = {
        {"SOURCES", source_usage}, {"SINKS", sink_usage}, {"DEAD-LETTER OUTPUTS", deadletter_usage}};
    for (size_t k = 0; k < 3; k++) {
        buf_printf(b, ".SH %s\n.nf\n", uris[k].title);
        buf_reset(&t);
        uris[k].list(&t);
        if (k == 0) buf_append_str(&t, "    -             JSON lines from standard input\n");
        roff_buf(b, &t);
        buf_append_str(b, ".fi\n");
    }
    buf_append_str(b, ".SH SINK SETTINGS\nGiven as \\fB\\-\\-sink\\-opt\\fR \\fIKEY\\fR=\\fIVALUE\\fR "
                      "(repeatable); the other sinks take none.\n");
    for (size_t i = 0; sink_registered(i); i++) {
        if (!sink_registered(i)->settings || settings_listed_before(i)) continue;
        buf_reset(&t);
        settings_schemes(&t, i);
        buf_append_str(b, ".SS ");
        roff_buf(b, &t);
        buf_append_byte(b, '\n');
        for (const sink_setting *st = sink_registered(i)->settings; st->key; st++) {
            buf_reset(&t);
            buf_append_str(&t, st->key);
            buf_append_str(b, ".TP\n\\fB");
            roff_buf(b, &t);
            buf_reset(&t);
            buf_append_str(&t, st->value);
            buf_append_str(b, "\\fR=\\fI");
            roff_buf(b, &t);
            buf_append_str(b, "\\fR\n");
            buf_reset(&t);
            setting_text(&t, st);
            roff_buf(b, &t);
            buf_append_byte(b, '\n');
        }
    }
    buf_append_str(b,
        ".SH VALUES\n"
        "Durations: 50s, 500ms, 2m, 1h, 1d. Counts: 5000, 100k, 2M; sizes: 64KiB, 1MiB, 1GiB. "
        "Booleans: true or false (also yes/no, on/off, 1/0); on the command line "
        "\\fB\\-\\-NAME\\fR sets one and \\fB\\-\\-no\\-NAME\\fR clears it.\n"
        ".SH CONFIGURATION FILE\n"
        "\\fB\\-\\-config\\fR \\fIFILE\\fR (or SESSIONIZER_CONFIG) names a YAML file that maps "
        "the long options' names to values. The command line wins over the environment, which "
        "wins over the file. Repeatable KEY=VALUE options are mappings and merge per key with "
        "the same precedence:\n"
        ".PP\n.nf\n"
        "source: kafka://broker1:9092/visits\n"
        "sink: \"postgresql://sessionizer@db:5432/analytics\"\n"
        "checkpoint: /var/lib/sessionizer/checkpoint\n"
        "gap: 50s\n"
        "source\\-opt:\n"
        "  sasl.password: \"@file:/run/credentials/sessionizer.service/kafka\"\n"
        "sink\\-opt:\n"
        "  password: \"@env:PGPASSWORD_SESSIONIZER\"\n"
        ".fi\n"
        ".PP\n"
        "An unknown name, a name given twice, or a value its option refuses is an error that "
        "names the file and line.\n"
        ".SH SECRETS\n"
        "A value of a KEY=VALUE option (\\fB\\-X\\fR, \\fB\\-\\-sink\\-opt\\fR) written "
        "\\fB@file:\\fR\\fIPATH\\fR is the file's contents (trailing newlines removed); "
        "\\fB@env:\\fR\\fINAME\\fR is the environment variable's value. Kafka SASL and TLS key "
        "passwords (\\fB\\-X sasl.password=\\fR, \\fB\\-X ssl.key.password=\\fR), and the "
        "PostgreSQL and CQL passwords (\\fB\\-\\-sink\\-opt password=\\fR) thus stay off the "
        "command line. A missing, empty or unreadable secret file, or an unset variable, "
        "is refused before the job starts.\n"
        ".SH ENVIRONMENT\n"
        "Each option \\fB\\-\\-NAME\\fR is also SESSIONIZER_NAME, upper case with \\- as _ "
        "(listed with each option above). An empty variable is unset. A list option's "
        "variable holds one KEY=VALUE a line.\n"
        ".SH FILES\n"
        ".TP\n.I /etc/sessionizer/sessionizer.yaml\nThe service's configuration "
        "(sessionizer.service).\n"
        ".TP\n.I /etc/sessionizer/environment\nSESSIONIZER_* variables for the service "
        "(EnvironmentFile=).\n"
        ".TP\n.I /var/lib/sessionizer/\nThe service's state directory (its checkpoint).\n"
        ".SH EXIT STATUS\n"
        "0: success, also after SIGINT or SIGTERM once the commit in flight is done. "
        "1: the job failed; the message says why and the last checkpoint is intact. "
        "2: a usage or configuration error.\n"
        ".SH SEE ALSO\n"
        "The README and docs/ of the source (semantics.md, guarantees.md, "
        "configuration.md); on a Debian system /usr/share/doc/sessionizer/.\n");
    buf_free(&t);
}

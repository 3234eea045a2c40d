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
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "common/units.h"
#include "common/xalloc.h"
#include "deadletter/deadletter.h"
#include "record/mapping.h"

/* Longest a time can be without the engine's arithmetic overflowing. */
#define HUNDRED_YEARS_US 3155760000000000ULL
#define MAX_LIST 256 /* values of one repeatable option */
#define MAX_OPTS 64
_Static_assert(TIME_EPOCH_NS == 4, "time_format_choices follows enum time_format");

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

const opt_def cli_option_table[] = {
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
    {.name = "until-end", .type = OPT_BOOL, .def = "false", AT_INT(job.until_end),
     .help = "stop at the end of the input and close every session"},
    {.name = "field", .type = OPT_LIST, .arg = "NAME=POINTER", AT_LIST(fields),
     .help = "where a field of the record is, as a JSON Pointer (repeatable): user=/userId, "
             "page=/context/url, time=/ts (default /user_id, /page, /event_time)"},
    {.name = "time-format", .type = OPT_ENUM, .arg = "FORMAT", .def = "iso8601",
     .choices = time_format_choices, AT_INT(time_format),
     .help = "how the event time is written: iso8601, or epoch_s, epoch_ms, epoch_us, epoch_ns "
             "(a JSON number or numeric string)"},
    {.name = "dlq", .type = OPT_STRING, .arg = "URI", .def = "jsonl:stderr", AT_STRING(job.dlq_uri),
     .help = "where bad and late records go, with their reason (see Dead-letter outputs)"},
    {.name = "max-pages", .type = OPT_COUNT, .arg = "N", .def = "10000", .min = 1,
     .max = 100000000, AT_UNSIGNED(job.engine.max_pages),
     .help = "pages kept per session, earliest first"},
    {.name = "max-record-bytes", .type = OPT_BYTES, .arg = "N", .def = "1MiB", .min = 64,
     .max = 1u << 30, AT_UNSIGNED(job.source.max_record_bytes),
     .help = "longer records are dead-lettered"},
    {.name = "commit-every", .type = OPT_COUNT, .arg = "N", .def = "100000", .min = 0,
     .max = UINT64_MAX, AT_UNSIGNED(job.commit_every),
     .help = "commit after N records (0: only by time)"},
    {.name = "commit-interval", .type = OPT_DURATION, .arg = "DUR", .def = "1s", .min = 0,
     .max = INT64_MAX, .scale = 1000, AT_I64(job.commit_interval_ms),
     .help = "and at least this often (0: only by count)"},
    {.name = "sink-opt", .type = OPT_LIST, .arg = "KEY=VALUE", AT_LIST(job.sink.props),
     .help = "sink setting (repeatable), e.g. consistency=ONE"},
    {.name = "create-schema", .type = OPT_BOOL, .def = "true", AT_INT(job.sink.create_schema),
     .help = "create the sink's table or keyspace when missing (--no-create-schema: never)"},
    {.name = "source-opt", .short_name = 'X', .type = OPT_LIST, .arg = "KEY=VALUE",
     AT_LIST(job.source.props),
     .help = "source property (repeatable), e.g. librdkafka settings"},
    {.name = "group", .type = OPT_STRING, .arg = "ID", .def = "sessionizer",
     AT_STRING(job.source.group), .help = "Kafka consumer group"},
    {.name = "start", .type = OPT_ENUM, .arg = "earliest|latest", .def = "earliest",
     .choices = start_choices, AT_INT(job.source.start_latest),
     .help = "where a run without checkpoint starts"},
    {.name = "progress", .type = OPT_BOOL, .def = "false", AT_INT(progress),
     .help = "progress lines on stderr even when it is not a terminal"},
    {.name = "stats", .type = OPT_BOOL, .def = "false", AT_INT(job.latency_stats),
     .help = "measure and print the latency from a session's close to the sink's "
             "acknowledgement (p50, p99, max)"},
    {.name = "quiet", .short_name = 'q', .type = OPT_BOOL, .def = "false", AT_INT(quiet),
     .help = "no progress and no summary"},
    {.name = NULL},
};

#define N_OPTS (sizeof cli_option_table / sizeof *cli_option_table - 1)
_Static_assert(N_OPTS <= MAX_OPTS, "raise MAX_OPTS");

typedef struct opt_list {
    const char **items; /* NULL-terminated once it has one */
    size_t n;
} opt_list;

struct opt_state {
    char **owned; /* every string a value points into */
    size_t n_owned, cap_owned;
    opt_list lists[MAX_OPTS];
};

int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "sessionizer: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'sessionizer --help' for more information.\n");
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

static int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcmp(s, yes[i]) == 0) return *out = 1, 0;
        if (strcmp(s, no[i]) == 0) return *out = 0, 0;
    }
    return -1;
}

/* Checks value against d and stores it. `where` names the value's origin in
 * messages ("--gap"). Returns 0, or 2 after printing a usage error. */
static int opt_set(cli_options *o, size_t i, const char *value, const char *where)
{
    const opt_def *d = &cli_option_table[i];
    char *field = (char *)o + d->off;
    switch (d->type) {
    case OPT_STRING:
        *(const char **)field = own(o, value);
        return 0;
    case OPT_BOOL: {
        int v;
        if (parse_bool(value, &v))
            return usage_error("invalid %s '%s' (true or false)", where, value);
        *(int *)field = v;
        return 0;
    }
    case OPT_ENUM:
        for (int k = 0; d->choices[k]; k++)
            if (strcmp(value, d->choices[k]) == 0) {
                *(int *)field = k;
                return 0;
            }
        {
            buf b;
            buf_init(&b);
            for (int k = 0; d->choices[k]; k++)
                buf_printf(&b, "%s'%s'", k == 0 ? "" : d->choices[k + 1] ? ", " : " or ",
                           d->choices[k]);
            usage_error("%s takes %s, not '%s'", where, cstr(&b), value);
            buf_free(&b);
            return 2;
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
            usage_error("invalid %s '%s' (%s)", where, value, cstr(&b));
            buf_free(&b);
            return 2;
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
            usage_error("invalid %s '%s' (%s; examples: 50s, 500ms, 2m)", where, value, cstr(&b));
            buf_free(&b);
            return 2;
        }
        *(int64_t *)field = us / d->scale;
        return 0;
    }
    case OPT_LIST: {
        if (!strchr(value, '=')) return usage_error("%s: '%s' is not KEY=VALUE", where, value);
        opt_list *l = &o->st->lists[i];
        if (l->n >= MAX_LIST)
            return usage_error("too many %s values at '%s' (at most %d)", where, value, MAX_LIST);
        l->items = xrealloc(l->items, (l->n + 2) * sizeof *l->items);
        l->items[l->n++] = own(o, value);
        l->items[l->n] = NULL;
        *(const char *const **)field = l->items;
        return 0;
    }
    }
    assert(!"unknown option type");
    return 2;
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
        for (size_t k = 0; k < i; k++)
            assert(strcmp(d->name, cli_option_table[k].name) != 0 &&
                   (!d->short_name || d->short_name != cli_option_table[k].short_name));
        (void)d;
    }
}

/* getopt_long's val for an option: 1000+i sets it, 2000+i is its --no- form. */
enum { VAL_SET = 1000, VAL_UNSET = 2000 };

typedef struct assignment {
    size_t opt;
    const char *value;
    const char *where; /* "--gap" */
} assignment;

int options_parse(cli_options *o, int argc, char **argv, int first)
{
    check_table();
    memset(o, 0, sizeof *o);
    o->st = xcalloc(1, sizeof *o->st);
    o->job.stop = NULL;
    int rc = 0;
    for (size_t i = 0; i < N_OPTS; i++)
        if (cli_option_table[i].def && (rc = opt_set(o, i, cli_option_table[i].def, "default")))
            return rc;

    /* The command line is read whole before anything is applied, so that a
     * --config named anywhere on it is loaded first, under it. */
    struct option longopts[2 * MAX_OPTS + 2];
    char *names[MAX_OPTS], *wheres[MAX_OPTS], shorts[MAX_OPTS][3];
    char shortopts[2 * MAX_OPTS + 2];
    size_t nl = 0, ns = 0, nn = 0;
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt_def *d = &cli_option_table[i];
        int arg = d->type == OPT_BOOL ? no_argument : required_argument;
        longopts[nl++] = (struct option){d->name, arg, NULL, VAL_SET + (int)i};
        if (d->type == OPT_BOOL) {
            buf b;
            buf_init(&b);
            buf_printf(&b, "no-%s", d->name);
            names[nn] = (char *)cstr(&b);
            longopts[nl++] = (struct option){names[nn++], no_argument, NULL, VAL_UNSET + (int)i};
        }
        if (d->short_name) {
            shortopts[ns++] = d->short_name;
            snprintf(shorts[i], sizeof shorts[i], "-%c", d->short_name);
            if (arg == required_argument) shortopts[ns++] = ':';
        }
        buf w;
        buf_init(&w);
        buf_printf(&w, "--%s", d->name);
        wheres[i] = (char *)cstr(&w);
    }
    shortopts[ns++] = 'h';
    shortopts[ns] = '\0';
    longopts[nl++] = (struct option){"help", no_argument, NULL, 'h'};
    longopts[nl] = (struct option){NULL, 0, NULL, 0};

    assignment *cli = xcalloc((size_t)argc + 1, sizeof *cli);
    size_t ncli = 0;
    optind = first;
    int c;
    while (rc == 0 && (c = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
        if (c == 'h') {
            buf b;
            buf_init(&b);
            options_help(&b);
            fwrite(b.data, 1, b.len, stdout);
            buf_free(&b);
            rc = 1;
        } else if (c >= VAL_SET && c < VAL_SET + (int)N_OPTS) {
            size_t i = (size_t)(c - VAL_SET);
            cli[ncli++] = (assignment){i, cli_option_table[i].type == OPT_BOOL ? "true" : optarg,
                                       wheres[i]};
        } else if (c >= VAL_UNSET && c < VAL_UNSET + (int)N_OPTS) {
            size_t i = (size_t)(c - VAL_UNSET);
            cli[ncli++] = (assignment){i, "false", wheres[i]};
        } else {
            size_t i = 0;
            while (i < N_OPTS && cli_option_table[i].short_name != c) i++;
            if (i < N_OPTS && c != '?')
                cli[ncli++] = (assignment){i, cli_option_table[i].type == OPT_BOOL ? "true" : optarg,
                                           shorts[i]};
            else
                rc = usage_error("%s", "invalid option");
        }
    }
    if (rc == 0 && optind < argc) rc = usage_error("unexpected argument '%s'", argv[optind]);
    for (size_t k = 0; rc == 0 && k < ncli; k++)
        rc = opt_set(o, cli[k].opt, cli[k].value, cli[k].where);
    free(cli);
    for (size_t k = 0; k < nn; k++) free(names[k]);
    for (size_t k = 0; k < N_OPTS; k++) free(wheres[k]);
    if (rc) return rc;

    /* The record layout, checked and resolved once. */
    char why[512];
    record_mapping *m = &o->job.records;
    record_mapping_default(m);
    m->time_format = (time_format)o->time_format;
    for (size_t k = 0; o->fields && o->fields[k]; k++)
        if (record_mapping_set_field(m, o->fields[k], why, sizeof why))
            return usage_error("%s", why);
    if (record_mapping_check(m, why, sizeof why)) return usage_error("%s", why);

    /* Settings that follow from others. */
    o->job.source.until_end = o->job.until_end;
    o->job.progress = o->quiet ? 0 : o->progress ? 2 : 1;
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
    for (size_t i = 0; i < N_OPTS; i++) free(st->lists[i].items);
    free(st);
    o->st = NULL;
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

void options_help(buf *b)
{
    buf_append_str(b,
        "usage: sessionizer run --source URI --sink URI [options]\n"
        "       sessionizer --help | --version\n"
        "\n"
        "Groups visits {\"user_id\", \"page\", \"event_time\"} into per-user event-time\n"
        "sessions and upserts each closed session under an id derived only from the\n"
        "input log, so that a replay rewrites the same rows (keyed idempotency).\n"
        "\n"
        "Sources (--source):\n");
    source_usage(b);
    buf_append_str(b, "    -             JSON lines from standard input\n\nSinks (--sink):\n");
    sink_usage(b);
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
        "Exit status: 0 ok, 1 the job failed, 2 usage.\n"
        "Documentation: README.md and docs/ (semantics.md for the exact rules).\n");
}

/*
 * test_options.c - the CLI's option table: every type parsed into its field,
 * bounds and bad values refused with status 2, defaults, --no- forms, lists,
 * and a --help that lists every entry of the table.
 */
#include "check.h"

#include "cli/options.h"

#include <stdarg.h>
#include <stdlib.h>

/* Parses "run ARGS..." (NULL-terminated); returns options_parse's status. */
static int parse(cli_options *o, ...)
{
    char *argv[64] = {"sessionizer", "run"};
    int argc = 2;
    va_list ap;
    va_start(ap, o);
    for (char *a; (a = va_arg(ap, char *)) != NULL;) argv[argc++] = a;
    va_end(ap);
    return options_parse(o, argc, argv, 2);
}

static void test_defaults(void)
{
    cli_options o;
    CHECK_EQ_I64(parse(&o, "--source", "-", "--sink", "null:", NULL), 0);
    CHECK_STR(o.job.source_uri, "-");
    CHECK_STR(o.job.sink_uri, "null:");
    CHECK_STR(o.job.dlq_uri, "jsonl:stderr");
    CHECK(o.job.checkpoint_dir == NULL);
    CHECK_EQ_I64(o.job.engine.gap_us, 50000000);
    CHECK_EQ_I64(o.job.engine.lateness_us, 10000000);
    CHECK_EQ_I64(o.job.engine.max_pages, 10000);
    CHECK_EQ_I64(o.job.source.max_record_bytes, 1 << 20);
    CHECK_EQ_I64(o.job.commit_every, 100000);
    CHECK_EQ_I64(o.job.commit_interval_ms, 1000);
    CHECK_EQ_I64(o.job.sink.create_schema, 1);
    CHECK_STR(o.job.source.group, "sessionizer");
    CHECK_EQ_I64(o.job.source.start_latest, 0);
    CHECK_EQ_I64(o.job.progress, 1);
    CHECK(o.job.source.props == NULL && o.job.sink.props == NULL);
    options_free(&o);
}

static void test_values(void)
{
    cli_options o;
    CHECK_EQ_I64(parse(&o, "--source", "file:a", "--sink", "sqlite:b", "--gap", "2m",
                       "--lateness", "500ms", "--max-pages", "2k", "--max-record-bytes", "64KiB",
                       "--commit-every", "0", "--commit-interval", "250ms", "--no-create-schema",
                       "-X", "a=1", "--source-opt", "b=2", "--sink-opt", "c=3", "--start", "latest",
                       "--until-end", "--checkpoint", "cp", "-q", "--stats", NULL), 0);
    CHECK_EQ_I64(o.job.engine.gap_us, 120000000);
    CHECK_EQ_I64(o.job.engine.lateness_us, 500000);
    CHECK_EQ_I64(o.job.engine.max_pages, 2000);
    CHECK_EQ_I64(o.job.source.max_record_bytes, 65536);
    CHECK_EQ_I64(o.job.commit_every, 0);
    CHECK_EQ_I64(o.job.commit_interval_ms, 250);
    CHECK_EQ_I64(o.job.sink.create_schema, 0);
    CHECK_STR(o.job.source.props[0], "a=1");
    CHECK_STR(o.job.source.props[1], "b=2");
    CHECK(o.job.source.props[2] == NULL);
    CHECK_STR(o.job.sink.props[0], "c=3");
    CHECK(o.job.sink.props[1] == NULL);
    CHECK_EQ_I64(o.job.source.start_latest, 1);
    CHECK_EQ_I64(o.job.until_end, 1);
    CHECK_EQ_I64(o.job.source.until_end, 1);
    CHECK_STR(o.job.checkpoint_dir, "cp");
    CHECK_EQ_I64(o.job.progress, 0);
    CHECK_EQ_I64(o.job.latency_stats, 1);
    options_free(&o);

    /* A later value wins; a bool's --no- form clears it again. */
    CHECK_EQ_I64(parse(&o, "--source", "-", "--sink", "null:", "--gap", "1s", "--gap", "3s",
                       "--until-end", "--no-until-end", "--progress", NULL), 0);
    CHECK_EQ_I64(o.job.engine.gap_us, 3000000);
    CHECK_EQ_I64(o.job.until_end, 0);
    CHECK_EQ_I64(o.job.progress, 2);
    options_free(&o);
}

static void test_errors(void)
{
    static const char *const bad[][2] = {
        {"--gap", "fifty"}, {"--gap", "0"}, {"--gap", "36526d"}, {"--lateness", "-1s"},
        {"--max-pages", "0"}, {"--max-pages", "100000001"}, {"--max-record-bytes", "63"},
        {"--max-record-bytes", "2GiB"}, {"--commit-every", "1x"}, {"--commit-interval", "1y"},
        {"--start", "middle"}, {"-X", "novalue"}, {"--sink-opt", "novalue"}, {"--bogus", NULL},
        {"stray", NULL}, {"--commit-every", "99999999999999999999"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cli_options o;
        int rc = bad[i][1] ? parse(&o, "--source", "-", "--sink", "null:", bad[i][0], bad[i][1], NULL)
                           : parse(&o, "--source", "-", "--sink", "null:", bad[i][0], NULL);
        if (rc != 2) fprintf(stderr, "not refused: %s %s\n", bad[i][0], bad[i][1] ? bad[i][1] : "");
        CHECK_EQ_I64(rc, 2);
        options_free(&o);
    }
    cli_options o;
    CHECK_EQ_I64(parse(&o, "--sink", "null:", NULL), 2);
    options_free(&o);
    CHECK_EQ_I64(parse(&o, "--source", "-", NULL), 2);
    options_free(&o);
    CHECK_EQ_I64(parse(&o, "--source", "-", "--sink", "null:", "--commit-every", "0",
                       "--commit-interval", "0", NULL), 2);
    options_free(&o);
    /* The bounds themselves are accepted. */
    CHECK_EQ_I64(parse(&o, "--source", "-", "--sink", "null:", "--gap", "36525d", "--max-pages",
                       "100M", "--max-record-bytes", "1GiB", "--lateness", "0", NULL), 0);
    CHECK_EQ_I64(o.job.engine.max_pages, 100000000);
    options_free(&o);
}

static void test_help(void)
{
    buf b;
    buf_init(&b);
    options_help(&b);
    buf_append_byte(&b, '\0');
    const char *h = (const char *)b.data;
    for (const opt_def *d = cli_option_table; d->name; d++) {
        char needle[80];
        snprintf(needle, sizeof needle, "%s%s", d->type == OPT_BOOL && d->def &&
                 strcmp(d->def, "true") == 0 ? "--[no-]" : "--", d->name);
        if (!strstr(h, needle)) fprintf(stderr, "not in --help: %s\n", needle);
        CHECK(strstr(h, needle) != NULL);
    }
    CHECK(strstr(h, "(default 50s)") != NULL);
    /* No line of the options' part is wider than 80 columns. */
    const char *opts = strstr(h, "\nOptions:\n");
    CHECK(opts != NULL);
    for (const char *p = opts; p && *p;) {
        const char *nl = strchr(p + 1, '\n');
        if (!nl) break;
        CHECK(nl - p - 1 <= 80);
        p = nl;
    }
    buf_free(&b);
}

int main(void)
{
    test_defaults();
    test_values();
    test_errors();
    test_help();
    return check_summary("test_options");
}

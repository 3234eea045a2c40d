/*
 * test_options.c - the CLI's option table: every type parsed into its field,
 * bounds and bad values refused with status 2, defaults, --no- forms, lists,
 * and a --help that lists every entry of the table.
 */
#include "check.h"

#include "cli/options.h"
#include "common/log.h"

#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/test_options.XXXXXX";

static const char *write_file(const char *name, const char *text)
{
    static char path[4][256];
    static int k;
    char *p = path[k++ % 4];
    snprintf(p, sizeof path[0], "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
    return p;
}

static const char *prop(const char *const *props, const char *key)
{
    size_t kl = strlen(key);
    for (size_t i = 0; props && props[i]; i++)
        if (strncmp(props[i], key, kl) == 0 && props[i][kl] == '=') return props[i] + kl + 1;
    return NULL;
}

static size_t count(const char *const *props)
{
    size_t n = 0;
    while (props && props[n]) n++;
    return n;
}

/* Parses "run ARGS..." (NULL-terminated); returns options_parse's status. */
static const char *cstr_of(buf *b)
{
    buf_append_byte(b, '\0');
    b->len--;
    return (const char *)b->data;
}

static int parse(cli_options *o, ...)
{
    char *argv[64] = {"sessionizer", "run"};
    int argc = 2;
    va_list ap;
    va_start(ap, o);
    for (char *a; (a = va_arg(ap, char *)) != NULL;) argv[argc++] = a;
    va_end(ap);
    return options_parse(o, argc, argv, 2, OPTIONS_RUN);
}

static void test_defaults(void)
{
    cli_options o;
    CHECK_EQ_I64(parse(&o, "--source", "-", "--sink", "null:", NULL), 0);
    CHECK_STR(o.job.source_uri, "-");
    CHECK_STR(o.job.sink_uri, "null:");
    CHECK(o.job.dlq_uri == NULL); /* DIR/deadletter.jsonl with --checkpoint DIR */
    CHECK_EQ_I64(o.log_format, LOG_FORMAT_TEXT);
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
                       "--until-end", "--checkpoint", "cp", "-q", "--stats", "--log-format", "json",
                       NULL), 0);
    CHECK_EQ_I64(o.log_format, LOG_FORMAT_JSON);
    log_set_format(LOG_FORMAT_TEXT);
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
        {"stray", NULL}, {"--commit-every", "99999999999999999999"}, {"--log-format", "yaml"}};
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

/* Defaults < file < environment < command line, for values and per key of
 * the KEY=VALUE lists. */
static void test_precedence(void)
{
    const char *cfg = write_file("c.yaml",
        "# a comment\n"
        "source: file:from-file\n"
        "sink: \"null:\"\n"
        "gap: 10s\n"
        "lateness: 1s\n"
        "max-pages: 7\n"
        "until-end: true\n"
        "start: latest\n"
        "source-opt:\n"
        "  a: file\n"
        "  b: file\n"
        "  c: \"x=y, z\"\n"
        "sink-opt: [t=file]\n");
    setenv("SESSIONIZER_GAP", "20s", 1);
    setenv("SESSIONIZER_LATENESS", "2s", 1);
    setenv("SESSIONIZER_SOURCE_OPT", "b=env\nd=env", 1);
    setenv("SESSIONIZER_CHECKPOINT", "", 1); /* empty: unset */
    cli_options o;
    CHECK_EQ_I64(parse(&o, "--config", cfg, "--gap", "30s", "-X", "a=cli", "--no-until-end", NULL), 0);
    CHECK_STR(o.job.source_uri, "file:from-file");
    CHECK_EQ_I64(o.job.engine.gap_us, 30000000);     /* cli over env over file */
    CHECK_EQ_I64(o.job.engine.lateness_us, 2000000); /* env over file */
    CHECK_EQ_I64(o.job.engine.max_pages, 7);         /* file over default */
    CHECK_EQ_I64(o.job.until_end, 0);                /* --no- over the file's true */
    CHECK_EQ_I64(o.job.source.until_end, 0);
    CHECK_EQ_I64(o.job.source.start_latest, 1);
    CHECK(o.job.checkpoint_dir == NULL);
    CHECK_STR(prop(o.job.source.props, "a"), "cli");
    CHECK_STR(prop(o.job.source.props, "b"), "env");
    CHECK_STR(prop(o.job.source.props, "c"), "x=y, z");
    CHECK_STR(prop(o.job.source.props, "d"), "env");
    CHECK_EQ_I64(count(o.job.source.props), 4); /* one value per key */
    CHECK_STR(prop(o.job.sink.props, "t"), "file");

    /* The printed configuration reads back to the same configuration. */
    buf p1, p2;
    buf_init(&p1);
    buf_init(&p2);
    options_print(&o, &p1, 1);
    CHECK(strstr((const char *)cstr_of(&p1), "gap: 30s   # command line") != NULL);
    CHECK(strstr((const char *)cstr_of(&p1), "lateness: 2s   # environment") != NULL);
    CHECK(strstr((const char *)cstr_of(&p1), "max-pages: 7   # config file") != NULL);
    CHECK(strstr((const char *)cstr_of(&p1), "# dlq: (not set)") != NULL);
    unsetenv("SESSIONIZER_GAP");
    unsetenv("SESSIONIZER_LATENESS");
    unsetenv("SESSIONIZER_SOURCE_OPT");
    unsetenv("SESSIONIZER_CHECKPOINT");
    const char *saved = write_file("saved.yaml", cstr_of(&p1));
    cli_options r;
    CHECK_EQ_I64(parse(&r, "--config", saved, NULL), 0);
    options_print(&r, &p2, 1);
    /* equal but for the origins in the comments */
    const char *a = cstr_of(&p1), *b = cstr_of(&p2);
    size_t lines = 0, same = 0;
    while (*a && *b) {
        size_t la = strcspn(a, "#\n"), lb = strcspn(b, "#\n");
        same += la == lb && strncmp(a, b, la) == 0;
        lines++;
        a += strcspn(a, "\n") + (a[strcspn(a, "\n")] != 0);
        b += strcspn(b, "\n") + (b[strcspn(b, "\n")] != 0);
    }
    CHECK(lines > 20);
    CHECK_EQ_I64(same, lines);
    CHECK(!*a && !*b);
    CHECK_EQ_I64(r.job.engine.gap_us, 30000000);
    CHECK_STR(prop(r.job.source.props, "c"), "x=y, z");
    buf_free(&p1);
    buf_free(&p2);
    options_free(&r);
    options_free(&o);

    /* SESSIONIZER_CONFIG names the file when --config does not. */
    setenv("SESSIONIZER_CONFIG", cfg, 1);
    CHECK_EQ_I64(parse(&o, NULL), 0);
    CHECK_EQ_I64(o.job.engine.gap_us, 10000000);
    options_free(&o);
    unsetenv("SESSIONIZER_CONFIG");
}

static void test_file_errors(void)
{
    static const char *const bad[] = {
        "gapp: 5s\n",                 /* unknown name */
        "gap: 5s\ngap: 6s\n",          /* twice */
        "gap: [5s]\n",                /* a list for a value */
        "gap:\n",                     /* no value */
        "gap: 5x\n",                  /* the option's own check */
        "- gap\n",                    /* not a mapping */
        "gap: \"5s\n",                /* not YAML */
        "config: other.yaml\n",       /* no nesting */
        "source-opt: {a: {b: c}}\n",  /* too deep */
        "source-opt: [novalue]\n",    /* not KEY=VALUE */
        "gap: 5s\n---\ngap: 6s\n",    /* a second document */
        "source-opt: {sasl.password: \"<redacted>\"}\n", /* a printed placeholder */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cli_options o;
        const char *f = write_file("bad.yaml", bad[i]);
        int rc = parse(&o, "--source", "-", "--sink", "null:", "--config", f, NULL);
        if (rc != 2) fprintf(stderr, "not refused: %s", bad[i]);
        CHECK_EQ_I64(rc, 2);
        options_free(&o);
    }
    cli_options o;
    CHECK_EQ_I64(parse(&o, "--source", "-", "--sink", "null:", "--config", "/nonexistent.yaml", NULL), 2);
    options_free(&o);
    /* an empty file is an empty configuration */
    CHECK_EQ_I64(parse(&o, "--source", "-", "--sink", "null:", "--config",
                       write_file("empty.yaml", ""), NULL), 0);
    options_free(&o);
    setenv("SESSIONIZER_GAP", "fifty", 1);
    CHECK_EQ_I64(parse(&o, "--source", "-", "--sink", "null:", NULL), 2);
    options_free(&o);
    unsetenv("SESSIONIZER_GAP");
}

/* @file: and @env: values are read in run mode, printed as references, and
 * a bad reference says what is wrong with it. */
static void test_secrets(void)
{
    const char *pw = write_file("pw", "s3cret\n");
    setenv("TEST_OPTIONS_PW", "envsecret", 1);
    char x[300];
    snprintf(x, sizeof x, "sasl.password=@file:%s", pw);
    cli_options o;
    CHECK_EQ_I64(parse(&o, "--source", "-", "--sink", "null:", "-X", x, "--sink-opt",
                       "password=@env:TEST_OPTIONS_PW", "-X", "ssl.key.password=inline", NULL), 0);
    CHECK_STR(prop(o.job.source.props, "sasl.password"), "s3cret");
    CHECK_STR(prop(o.job.sink.props, "password"), "envsecret");
    CHECK_STR(prop(o.job.source.props, "ssl.key.password"), "inline");
    options_free(&o);

    char *argv[] = {"sessionizer", "config", "-X", x, "-X", "ssl.key.password=inline", "--sink",
                    "postgresql://u:pw123@h/db", NULL};
    CHECK_EQ_I64(options_parse(&o, 8, argv, 2, OPTIONS_PRINT), 0);
    buf b;
    buf_init(&b);
    options_print(&o, &b, 1);
    const char *t = cstr_of(&b);
    CHECK(strstr(t, "s3cret") == NULL && strstr(t, "\"inline\"") == NULL && strstr(t, "pw123") == NULL);
    CHECK(strstr(t, "\"sasl.password\": \"@file:") != NULL);
    CHECK(strstr(t, "\"ssl.key.password\": \"<redacted>\"") != NULL);
    CHECK(strstr(t, "postgresql://u:<redacted>@h/db") != NULL);
    buf_free(&b);
    options_free(&o);

    char dir[300];
    snprintf(dir, sizeof dir, "%s/d", tmpdir);
    mkdir(dir, 0700);
    const char *empty = write_file("empty", "\n");
    const char *const refs[] = {"@file:/nonexistent/pw", "@file:", "@env:TEST_OPTIONS_UNSET", NULL,
                                NULL};
    for (int i = 0; i < 5; i++) {
        char v[400];
        if (i == 3) snprintf(v, sizeof v, "password=@file:%s", dir);
        else if (i == 4) snprintf(v, sizeof v, "password=@file:%s", empty);
        else snprintf(v, sizeof v, "password=%s", refs[i]);
        CHECK_EQ_I64(parse(&o, "--source", "-", "--sink", "null:", "--sink-opt", v, NULL), 2);
        options_free(&o);
    }
}

int main(void)
{
    if (!mkdtemp(tmpdir)) return 1;
    test_precedence();
    test_file_errors();
    test_secrets();
    test_defaults();
    test_values();
    test_errors();
    test_help();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) return 1;
    return check_summary("test_options");
}

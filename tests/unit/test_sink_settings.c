/*
 * test_sink_settings.c - the sinks' --sink-opt settings (sink.h): each sink's
 * table is what its parser accepts and what --help and the man page list.
 * For every registered sink and every setting of its table: the parser takes
 * KEY=DEFAULT (or a sample value when there is no default) and goes on to the
 * next prop; --help and the man page list KEY=VALUE; a key outside the table
 * is refused naming every key of the table. A sink without settings refuses
 * any --sink-opt instead of ignoring it. Counts and booleans are spelt as on
 * the command line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "cli/options.h"
#include "sink/sink.h"

/* A target each sink parses without connecting anywhere before its
 * settings are read (their parse comes first). */
static const char *target_of(const char *scheme)
{
    if (strcmp(scheme, "postgresql") == 0 || strcmp(scheme, "postgres") == 0)
        return "//127.0.0.1:1/db";
    if (strcmp(scheme, "cql") == 0) return "//127.0.0.1:1/ks";
    if (strcmp(scheme, "sqlite") == 0 || strcmp(scheme, "jsonl") == 0)
        return "/nonexistent-dir/out";
    if (strcmp(scheme, "null") == 0) return "";
    return NULL;
}

int main(void)
{
    char secret_file[] = "/tmp/test_sink_settings.XXXXXX";
    int fd = mkstemp(secret_file);
    CHECK(fd >= 0 && write(fd, "pw\n", 3) == 3);
    close(fd);
    buf help, man;
    buf_init(&help);
    buf_init(&man);
    options_help(&help);
    options_man(&man);
    buf_append_byte(&help, 0);
    buf_append_byte(&man, 0);
    size_t n_settings = 0;
    for (size_t i = 0; sink_registered(i); i++) {
        const sink_ops *ops = sink_registered(i);
        const char *target = target_of(ops->scheme);
        if (!target) {
            fprintf(stderr, "no test target for the %s sink: add it to target_of\n", ops->scheme);
            CHECK(0);
            continue;
        }
        char uri[256], err[2048];
        snprintf(uri, sizeof uri, "%s:%s", ops->scheme, target);
        sink_options opts = {.create_schema = 1};
        if (!ops->settings) {
            const char *props[] = {"table=x", NULL};
            opts.props = props;
            sink *s = sink_open(uri, &opts, err, sizeof err);
            CHECK(s == NULL);
            if (s) s->ops->close(s);
            CHECK(strstr(err, "takes no --sink-opt settings") != NULL);
            continue;
        }
        for (const sink_setting *st = ops->settings; st->key; st++) {
            n_settings++;
            char kv[512], listed[256];
            const char *v = st->def                               ? st->def
                            : strcmp(st->key, "password_file") == 0 ? secret_file
                                                                    : "sample";
            snprintf(kv, sizeof kv, "%s=%s", st->key, v);
            const char *props[] = {kv, "no_such_setting=1", NULL};
            opts.props = props;
            sink *s = sink_open(uri, &opts, err, sizeof err);
            CHECK(s == NULL);
            if (s) s->ops->close(s);
            /* the parser took KEY=VALUE and went on to the next prop */
            if (!strstr(err, "unknown option 'no_such_setting'")) {
                fprintf(stderr, "%s: %s: %s\n", ops->scheme, kv, err);
                CHECK(0);
            }
            /* whose refusal names every key of the table */
            snprintf(listed, sizeof listed, "%s", st->key);
            CHECK(strstr(strstr(err, "known: ") ? strstr(err, "known: ") : "", listed) != NULL);
            /* --help and the man page list it */
            snprintf(listed, sizeof listed, "    %s=%s ", st->key, st->value);
            char listed_nl[256];
            snprintf(listed_nl, sizeof listed_nl, "    %s=%s\n", st->key, st->value);
            if (!strstr((const char *)help.data, listed) &&
                !strstr((const char *)help.data, listed_nl)) {
                fprintf(stderr, "--help does not list %s:%s\n", ops->scheme, st->key);
                CHECK(0);
            }
            snprintf(listed, sizeof listed, "\\fB%s\\fR=", st->key);
            char roffed[256];
            size_t o = 0;
            for (const char *p = listed; *p && o + 3 < sizeof roffed; p++) {
                if (*p == '-') roffed[o++] = '\\'; /* roff's minus */
                roffed[o++] = *p;
            }
            roffed[o] = 0;
            CHECK(strstr((const char *)man.data, roffed) != NULL);
        }
    }
    CHECK(n_settings >= 20); /* PostgreSQL's (twice) and CQL's at least */

    /* Counts and booleans are written as on the command line (common/units.h). */
    static const struct { const char *uri, *prop; int ok; } counts[] = {
        {"postgresql://127.0.0.1:1/db", "batch_rows=2k", 1},
        {"postgresql://127.0.0.1:1/db", "batch_rows=2x", 0},
        {"cql://127.0.0.1:1/ks", "max_in_flight=1k", 1},
        {"cql://127.0.0.1:1/ks", "batch_size=2k", 0}, /* over 1024 */
        /* and booleans too (a config file's tls: true) */
        {"cql://127.0.0.1:1/ks", "tls=true", 1},
        {"cql://127.0.0.1:1/ks", "token_aware=off", 1},
        {"cql://127.0.0.1:1/ks", "tls=2", 0},
    };
    for (size_t i = 0; i < sizeof counts / sizeof *counts; i++) {
        char err[2048] = "";
        const char *props[] = {counts[i].prop, "no_such_setting=1", NULL};
        sink_options opts = {.create_schema = 1, .props = props};
        sink *s = sink_open(counts[i].uri, &opts, err, sizeof err);
        CHECK(s == NULL);
        if (s) s->ops->close(s);
        int went_on = strstr(err, "unknown option 'no_such_setting'") != NULL;
        if (went_on != counts[i].ok) fprintf(stderr, "%s: %s\n", counts[i].prop, err);
        CHECK(went_on == counts[i].ok);
    }
    buf_free(&help);
    buf_free(&man);
    unlink(secret_file);
    return check_summary("test_sink_settings");
}

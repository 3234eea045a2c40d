/*
 * mapping.c - the record layout options, checked and resolved at start-up
 * (see mapping.h).
 */
#include "record/mapping.h"

#include <stdio.h>
#include <string.h>

static const char *const field_keys[FIELD_COUNT] = {"user", "page", "time"};
static const char *const default_pointers[FIELD_COUNT] = {"/user_id", "/page", "/event_time"};
static const char *const time_names[] = {"iso8601", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns"};

int json_pointer_parse(json_pointer *p, const char *text, char *err, size_t errlen)
{
    size_t n = strlen(text);
    memset(p, 0, sizeof *p);
    if (n == 0 || text[0] != '/') {
        snprintf(err, errlen, "'%s' is not a JSON Pointer to a field (RFC 6901: it starts with "
                 "'/', e.g. /userId or /context/url)", text);
        return -1;
    }
    if (n > POINTER_MAX_BYTES) {
        snprintf(err, errlen, "JSON Pointer '%.40s...' is longer than %d bytes", text,
                 POINTER_MAX_BYTES);
        return -1;
    }
    memcpy(p->text, text, n + 1);
    size_t used = 0;
    for (size_t i = 0; i < n;) {
        if (p->n == POINTER_MAX_TOKENS) {
            snprintf(err, errlen, "JSON Pointer '%s' has more than %d levels", text,
                     POINTER_MAX_TOKENS);
            return -1;
        }
        i++; /* the '/' */
        uint32_t k = p->n++;
        p->off[k] = (uint16_t)used;
        for (; i < n && text[i] != '/'; i++) {
            char c = text[i];
            if (c == '~') {
                if (i + 1 < n && (text[i + 1] == '0' || text[i + 1] == '1')) {
                    c = text[++i] == '0' ? '~' : '/';
                } else {
                    snprintf(err, errlen, "JSON Pointer '%s': '~' must be written ~0, and '/' "
                             "inside a key ~1", text);
                    return -1;
                }
            }
            p->store[used++] = c;
        }
        p->len[k] = (uint16_t)(used - p->off[k]);
        /* An array index: "0" or digits without a leading zero (RFC 6901). */
        const char *t = p->store + p->off[k];
        size_t tl = p->len[k];
        p->index[k] = -1;
        if (tl > 0 && tl <= 9 && (tl == 1 || t[0] != '0')) {
            int64_t v = 0;
            size_t j = 0;
            for (; j < tl && t[j] >= '0' && t[j] <= '9'; j++) v = v * 10 + (t[j] - '0');
            if (j == tl) p->index[k] = v;
        }
    }
    return 0;
}

void record_mapping_default(record_mapping *m)
{
    memset(m, 0, sizeof *m);
    char err[16];
    for (int f = 0; f < FIELD_COUNT; f++) {
        int rc = json_pointer_parse(&m->field[f], default_pointers[f], err, sizeof err);
        (void)rc;
    }
}

int record_mapping_set_field(record_mapping *m, const char *spec, char *err, size_t errlen)
{
    const char *eq = strchr(spec, '=');
    int f = -1;
    for (int i = 0; eq && i < FIELD_COUNT; i++)
        if ((size_t)(eq - spec) == strlen(field_keys[i]) &&
            strncmp(spec, field_keys[i], (size_t)(eq - spec)) == 0)
            f = i;
    if (f < 0) {
        snprintf(err, errlen, "--field '%s': expected user=POINTER, page=POINTER or "
                 "time=POINTER (e.g. --field user=/userId)", spec);
        return -1;
    }
    char why[300];
    if (json_pointer_parse(&m->field[f], eq + 1, why, sizeof why)) {
        snprintf(err, errlen, "--field %s: %s", spec, why);
        return -1;
    }
    return 0;
}

int record_mapping_set_user_type(record_mapping *m, const char *name, char *err, size_t errlen)
{
    if (strcmp(name, "int") == 0) m->user_type = USER_INT;
    else if (strcmp(name, "string") == 0) m->user_type = USER_STRING;
    else {
        snprintf(err, errlen, "--user-type takes 'int' or 'string', not '%s'", name);
        return -1;
    }
    return 0;
}

int record_mapping_set_time_format(record_mapping *m, const char *name, char *err, size_t errlen)
{
    for (size_t i = 0; i < sizeof time_names / sizeof *time_names; i++)
        if (strcmp(name, time_names[i]) == 0) {
            m->time_format = (time_format)i;
            return 0;
        }
    snprintf(err, errlen, "--time-format takes iso8601, epoch_s, epoch_ms, epoch_us or epoch_ns, "
             "not '%s'", name);
    return -1;
}

const char *time_format_name(time_format f) { return time_names[f]; }

const char *record_mapping_field_name(const record_mapping *m, int field)
{
    const json_pointer *p = &m->field[field];
    /* one token spelled without escapes: the key itself, after the '/' */
    if (p->n == 1 && strcspn(p->text + 1, "~") == strlen(p->text + 1)) return p->text + 1;
    return p->text;
}

void record_mapping_describe(const record_mapping *m, buf *out)
{
    buf_printf(out, "user=%s page=%s time=%s user-type=%s time-format=%s",
               m->user_from_key ? "key" : m->field[FIELD_USER].text, m->field[FIELD_PAGE].text,
               m->time_from_kafka ? "kafka" : m->field[FIELD_TIME].text,
               m->user_type == USER_STRING ? "string" : "int", time_format_name(m->time_format));
}

/* 1 if a's tokens are a prefix of b's (or equal). */
static int pointer_prefix(const json_pointer *a, const json_pointer *b)
{
    if (a->n > b->n) return 0;
    for (uint32_t k = 0; k < a->n; k++)
        if (a->len[k] != b->len[k] || memcmp(a->store + a->off[k], b->store + b->off[k], a->len[k]))
            return 0;
    return 1;
}

int record_mapping_check(const record_mapping *m, char *err, size_t errlen)
{
    int from_json[FIELD_COUNT] = {!m->user_from_key, 1, !m->time_from_kafka};
    for (int a = 0; a < FIELD_COUNT; a++)
        for (int b = 0; b < FIELD_COUNT; b++)
            if (a != b && from_json[a] && from_json[b] &&
                pointer_prefix(&m->field[a], &m->field[b])) {
                snprintf(err, errlen, "--field %s=%s and %s=%s: %s", field_keys[a],
                         m->field[a].text, field_keys[b], m->field[b].text,
                         m->field[a].n == m->field[b].n ? "two fields cannot be the same value"
                                                        : "one field cannot be inside another");
                return -1;
            }
    return 0;
}

/*
 * config_file.c - YAML configuration files through libyaml's document API
 * (see config_file.h).
 *
 * Every scalar is handed over as its text: YAML's own typing (yes/no as
 * booleans, 010 as octal, 1e3 as a float) never applies, because each
 * option's own parser reads the text, the same one that reads the command
 * line. Shapes other than a mapping of scalars, lists of scalars and
 * mappings of scalars are refused with their line, and so are empty values:
 * a key without a value is more likely a mistake than a wish for the default.
 */
#include "cli/config_file.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <yaml.h>

/* A scalar node's text, or NULL if it is not a usable scalar. */
static const char *scalar(yaml_node_t *n, int *empty)
{
    *empty = 0;
    if (!n || n->type != YAML_SCALAR_NODE) return NULL;
    const char *v = (const char *)n->data.scalar.value;
    if (strlen(v) != n->data.scalar.length) return NULL; /* an escaped NUL */
    if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
        (!*v || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 || strcmp(v, "Null") == 0 ||
         strcmp(v, "NULL") == 0))
        *empty = 1;
    return v;
}

static int line_of(yaml_node_t *n) { return n ? (int)n->start_mark.line + 1 : 0; }

static int walk(yaml_document_t *doc, config_file_cb cb, void *ctx, char *err, size_t errlen)
{
    yaml_node_t *root = yaml_document_get_root_node(doc);
    if (!root) return 0; /* an empty file */
    if (root->type != YAML_MAPPING_NODE) {
        snprintf(err, errlen, "line %d: expected a mapping of option names to values",
                 line_of(root));
        return -1;
    }
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(doc, p->key);
        yaml_node_t *v = yaml_document_get_node(doc, p->value);
        int empty;
        const char *name = scalar(k, &empty);
        if (!name || empty) {
            snprintf(err, errlen, "line %d: an option name must be a plain word", line_of(k));
            return -1;
        }
        int rc = 0;
        if (v && v->type == YAML_SCALAR_NODE) {
            const char *s = scalar(v, &empty);
            if (!s || empty) {
                snprintf(err, errlen, "line %d: %s has no value%s", line_of(v), name,
                         s ? " (to keep the default, leave the line out)" : " it can use");
                return -1;
            }
            rc = cb(ctx, name, s, CONFIG_SCALAR, line_of(v), err, errlen);
        } else if (v && v->type == YAML_SEQUENCE_NODE) {
            for (yaml_node_item_t *i = v->data.sequence.items.start;
                 rc == 0 && i < v->data.sequence.items.top; i++) {
                yaml_node_t *item = yaml_document_get_node(doc, *i);
                const char *s = scalar(item, &empty);
                if (!s || empty) {
                    snprintf(err, errlen, "line %d: each item of %s must be a KEY=VALUE string",
                             line_of(item), name);
                    return -1;
                }
                rc = cb(ctx, name, s, CONFIG_ITEM, line_of(item), err, errlen);
            }
        } else if (v && v->type == YAML_MAPPING_NODE) {
            for (yaml_node_pair_t *q = v->data.mapping.pairs.start;
                 rc == 0 && q < v->data.mapping.pairs.top; q++) {
                int e1, e2;
                yaml_node_t *ik = yaml_document_get_node(doc, q->key);
                yaml_node_t *iv = yaml_document_get_node(doc, q->value);
                const char *ks = scalar(ik, &e1), *vs = scalar(iv, &e2);
                if (!ks || e1 || !vs || e2) {
                    snprintf(err, errlen, "line %d: each entry under %s must be KEY: VALUE with "
                             "both a text", line_of(ik), name);
                    return -1;
                }
                if (strchr(ks, '=')) {
                    snprintf(err, errlen, "line %d: a key under %s cannot contain '='",
                             line_of(ik), name);
                    return -1;
                }
                char kv[8192];
                if ((size_t)snprintf(kv, sizeof kv, "%s=%s", ks, vs) >= sizeof kv) {
                    snprintf(err, errlen, "line %d: %s: %s is longer than %zu bytes",
                             line_of(ik), name, ks, sizeof kv - 1);
                    return -1;
                }
                rc = cb(ctx, name, kv, CONFIG_ITEM, line_of(ik), err, errlen);
            }
        } else {
            snprintf(err, errlen, "line %d: %s has no value it can use", line_of(k), name);
            return -1;
        }
        if (rc) return rc;
    }
    return 0;
}

int config_file_parse(const unsigned char *data, size_t len, config_file_cb cb, void *ctx,
                      char *err, size_t errlen)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    yaml_parser_set_input_string(&parser, data ? data : (const unsigned char *)"", data ? len : 0);
    int rc;
    if (!yaml_parser_load(&parser, &doc)) {
        snprintf(err, errlen, "line %d: %s%s%s", (int)parser.problem_mark.line + 1,
                 parser.problem ? parser.problem : "not YAML",
                 parser.context ? " " : "", parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        return -1;
    }
    rc = walk(&doc, cb, ctx, err, errlen);
    int had_root = yaml_document_get_root_node(&doc) != NULL;
    yaml_document_delete(&doc);
    if (rc == 0 && had_root) {
        /* A second document would be ignored silently: refuse it. */
        if (!yaml_parser_load(&parser, &doc)) {
            snprintf(err, errlen, "line %d: %s", (int)parser.problem_mark.line + 1,
                     parser.problem ? parser.problem : "not YAML");
            rc = -1;
        } else {
            if (yaml_document_get_root_node(&doc)) {
                snprintf(err, errlen, "line %d: a second YAML document; a configuration is one",
                         (int)doc.start_mark.line + 1);
                rc = -1;
            }
            yaml_document_delete(&doc);
        }
    }
    yaml_parser_delete(&parser);
    return rc;
}

int config_file_read(const char *path, buf *out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    unsigned char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (out->len + n > CONFIG_FILE_MAX_BYTES) {
            fclose(f);
            snprintf(err, errlen, "%s is larger than %d bytes", path, CONFIG_FILE_MAX_BYTES);
            return -1;
        }
        buf_append(out, chunk, n);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(EIO));
        return -1;
    }
    return 0;
}

void config_file_quote(buf *b, const char *s)
{
    buf_append_byte(b, '"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            buf_append_byte(b, '\\');
            buf_append_byte(b, *p);
        } else if (*p == '\n') {
            buf_append_str(b, "\\n");
        } else if (*p == '\t') {
            buf_append_str(b, "\\t");
        } else if (*p < 0x20 || *p == 0x7f) {
            buf_printf(b, "\\x%02x", *p);
        } else if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) {
            /* C1 controls: not printable in YAML, and U+0085 (NEL) is a line
             * break that a reader folds into a space */
            buf_printf(b, "\\x%02x", p[1]);
            p++;
        } else if (p[0] == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9)) {
            buf_append_str(b, p[2] == 0xa8 ? "\\L" : "\\P"); /* line and paragraph separators */
            p += 2;
        } else if (p[0] == 0xef && ((p[1] == 0xbb && p[2] == 0xbf) || (p[1] == 0xbf && p[2] >= 0xbe))) {
            /* U+FEFF, U+FFFE, U+FFFF: not printable in YAML */
            buf_printf(b, "\\u%s", p[1] == 0xbb ? "FEFF" : p[2] == 0xbe ? "FFFE" : "FFFF");
            p += 2;
        } else {
            buf_append_byte(b, *p); /* UTF-8 passes through: YAML is UTF-8 */
        }
    }
    buf_append_byte(b, '"');
}

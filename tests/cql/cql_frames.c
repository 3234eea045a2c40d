/*
 * cql_frames.c - prints the request frames the CQL client builds, for the
 * golden-frame test (test_cql_golden.py), which holds them byte for byte
 * against the DataStax Python driver's encoders.
 *
 *   cql_frames codec            one line per case: "NAME HEX", frames built
 *                               by the codec (src/cql/cql_proto.c)
 *   cql_frames tokens           "HEXKEY TOKEN" for Murmur3 test keys
 *   cql_frames wire HOST:PORT USER PASSWORD
 *                               drives the real client (cql_client.c) against
 *                               cql-testserver --dump-frames: STARTUP,
 *                               AUTH_RESPONSE, PREPARE, EXECUTE, BATCH as they
 *                               go on the wire, with the fixed values below
 *
 * The values are fixed here and mirrored in test_cql_golden.py.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cql/cql_client.h"
#include "cql/cql_proto.h"
#include "cql/murmur3.h"

static void print_frame(const char *name, const buf *b)
{
    printf("%s ", name);
    for (size_t i = 0; i < b->len; i++) printf("%02x", b->data[i]);
    printf("\n");
}

static const unsigned char test_id[16] = {0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe,
                                          0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};

/* session_id, user_id, pages, ingestion_time: the sink's INSERT */
static void session_values(cql_values *v, int64_t sid, int64_t uid, const char *const *pages,
                           int n, int64_t ts_ms)
{
    cql_values_bigint(v, sid);
    cql_values_bigint(v, uid);
    size_t at = cql_values_collection_begin(v, n);
    for (int i = 0; i < n; i++) cql_values_collection_text(v, pages[i], strlen(pages[i]));
    cql_values_collection_end(v, at);
    cql_values_timestamp(v, ts_ms);
}

static const char *const pages_a[] = {"/home", "/caf\xc3\xa9?q=1", ""};
static const char *const pages_b[] = {"/x"};

static int codec(void)
{
    buf b;
    buf_init(&b);

    const char *kv[] = {"CQL_VERSION", "3.0.0"};
    cql_encode_startup(&b, 1, kv, 1);
    print_frame("startup", &b);

    buf_reset(&b);
    cql_encode_options(&b, 2);
    print_frame("options", &b);

    buf tok;
    buf_init(&tok);
    cql_sasl_plain(&tok, "alice", "s3cret");
    buf_reset(&b);
    cql_encode_auth_response(&b, 3, tok.data, (int32_t)tok.len);
    print_frame("auth_response", &b);
    buf_free(&tok);

    buf_reset(&b);
    const char *q = "SELECT * FROM system.local WHERE key='local'";
    cql_query_params qp = {.consistency = CQL_CONSISTENCY_ONE};
    cql_encode_query(&b, 4, q, strlen(q), &qp);
    print_frame("query", &b);

    cql_values v;
    cql_values_init(&v);
    cql_values_bigint(&v, 42);
    cql_values_text(&v, "x", 1);
    buf_reset(&b);
    const char *q2 = "INSERT INTO ks.t (a, b) VALUES (?, ?)";
    cql_query_params qp2 = {.consistency = CQL_CONSISTENCY_LOCAL_QUORUM,
                            .values = &v,
                            .page_size = 5000,
                            .serial_consistency = CQL_CONSISTENCY_LOCAL_SERIAL,
                            .has_timestamp = 1,
                            .timestamp = 1234567};
    cql_encode_query(&b, 5, q2, strlen(q2), &qp2);
    print_frame("query_values", &b);

    buf_reset(&b);
    const char *ins = "INSERT INTO dedp.sessions (session_id, user_id, pages, ingestion_time) "
                      "VALUES (?, ?, ?, ?)";
    cql_encode_prepare(&b, 6, ins, strlen(ins));
    print_frame("prepare", &b);

    cql_values_reset(&v);
    session_values(&v, -5, 7, pages_a, 3, 1700000000123LL);
    buf_reset(&b);
    cql_query_params qe = {.consistency = CQL_CONSISTENCY_LOCAL_QUORUM,
                           .values = &v,
                           .has_timestamp = 1,
                           .timestamp = 1700000000123000LL};
    cql_encode_execute(&b, 7, test_id, sizeof test_id, &qe);
    print_frame("execute", &b);

    cql_values_reset(&v);
    cql_values_bigint(&v, INT64_MIN);
    cql_values_null(&v);
    cql_values_unset(&v);
    cql_values_timestamp(&v, -1);
    buf_reset(&b);
    cql_query_params qn = {.consistency = CQL_CONSISTENCY_ONE, .values = &v};
    cql_encode_execute(&b, 8, test_id, sizeof test_id, &qn);
    print_frame("execute_nulls", &b);

    cql_values items[3];
    cql_batch_item bi[3];
    for (int i = 0; i < 3; i++) {
        cql_values_init(&items[i]);
        session_values(&items[i], 100 + i, 200 + i, i == 1 ? pages_b : pages_a, i == 1 ? 1 : 3,
                       1700000000000LL + i);
        bi[i] = (cql_batch_item){.id = test_id, .id_len = sizeof test_id, .values = &items[i]};
    }
    buf_reset(&b);
    cql_batch_params bp = {.type = CQL_BATCH_UNLOGGED,
                           .consistency = CQL_CONSISTENCY_LOCAL_QUORUM,
                           .has_timestamp = 1,
                           .timestamp = 1700000000999000LL};
    cql_encode_batch(&b, 9, bi, 3, &bp);
    print_frame("batch", &b);

    /* a batch mixing a query string and a prepared id, no timestamp */
    cql_batch_item mixed[2] = {
        {.query = "INSERT INTO ks.t (a) VALUES (1)", .query_len = 31, .values = NULL},
        {.id = test_id, .id_len = sizeof test_id, .values = &items[1]},
    };
    buf_reset(&b);
    cql_batch_params bp2 = {.type = CQL_BATCH_LOGGED, .consistency = CQL_CONSISTENCY_QUORUM};
    cql_encode_batch(&b, 10, mixed, 2, &bp2);
    print_frame("batch_mixed", &b);

    buf_reset(&b);
    const char *ev[] = {"TOPOLOGY_CHANGE", "STATUS_CHANGE", "SCHEMA_CHANGE"};
    cql_encode_register(&b, 11, ev, 3);
    print_frame("register", &b);

    for (int i = 0; i < 3; i++) cql_values_free(&items[i]);
    cql_values_free(&v);
    buf_free(&b);
    return 0;
}

static int tokens(void)
{
    /* bigint keys as the sink binds them, then keys of every tail length */
    int64_t keys[] = {0, 1, -1, 42, INT64_MIN, INT64_MAX, 1700000000123LL, -987654321012345LL};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        unsigned char k[8];
        uint64_t u = (uint64_t)keys[i];
        for (int j = 0; j < 8; j++) k[j] = (unsigned char)(u >> (56 - 8 * j));
        printf("%016llx %lld\n", (unsigned long long)u, (long long)cql_murmur3_token(k, 8));
    }
    unsigned char data[40];
    for (int i = 0; i < 40; i++) data[i] = (unsigned char)(0x80 + i * 7); /* high bits set */
    for (size_t n = 0; n <= 40; n++) {
        for (size_t j = 0; j < n; j++) printf("%02x", data[j]);
        printf("%s %lld\n", n ? "" : "-", (long long)cql_murmur3_token(data, n));
    }
    return 0;
}

static int wire(const char *hostport, const char *user, const char *pass)
{
    cql_client_config cfg;
    cql_client_config_defaults(&cfg);
    cfg.contact_points = hostport;
    cfg.username = user;
    cfg.password = pass;
    cfg.connect_timeout_ms = 5000;
    cfg.request_timeout_ms = 5000;
    cfg.retry_timeout_ms = 10000;
    char err[1024];
    cql_client *c = cql_client_connect(&cfg, err, sizeof err);
    if (!c) {
        fprintf(stderr, "cql_frames: %s\n", err);
        return 1;
    }
    if (cql_client_query(c, "CREATE KEYSPACE IF NOT EXISTS dedp WITH replication = {'class': "
                         "'SimpleStrategy', 'replication_factor': 1}", NULL,
                         CQL_CONSISTENCY_LOCAL_QUORUM, NULL, err, sizeof err) ||
        cql_client_query(c, "CREATE TABLE IF NOT EXISTS dedp.sessions (session_id bigint, "
                         "user_id bigint, pages list<text>, ingestion_time timestamp, PRIMARY "
                         "KEY(session_id, user_id))", NULL, CQL_CONSISTENCY_LOCAL_QUORUM, NULL,
                         err, sizeof err)) {
        fprintf(stderr, "cql_frames: %s\n", err);
        cql_client_free(c);
        return 1;
    }
    const char *ins = "INSERT INTO dedp.sessions (session_id, user_id, pages, ingestion_time) "
                      "VALUES (?, ?, ?, ?)";
    cql_prepared *p = cql_client_prepare(c, ins, err, sizeof err);
    if (!p) {
        fprintf(stderr, "cql_frames: %s\n", err);
        cql_client_free(c);
        return 1;
    }
    cql_values v;
    cql_values_init(&v);
    session_values(&v, -5, 7, pages_a, 3, 1700000000123LL);
    int rc = cql_client_execute(c, p, &v, CQL_CONSISTENCY_LOCAL_QUORUM, 1700000000123000LL, err,
                                sizeof err);
    cql_values items[3];
    const cql_values *ptrs[3];
    for (int i = 0; i < 3; i++) {
        cql_values_init(&items[i]);
        session_values(&items[i], 100 + i, 200 + i, i == 1 ? pages_b : pages_a, i == 1 ? 1 : 3,
                       1700000000000LL + i);
        ptrs[i] = &items[i];
    }
    if (!rc) rc = cql_client_batch(c, p, ptrs, 3, CQL_BATCH_UNLOGGED, CQL_CONSISTENCY_LOCAL_QUORUM,
                                   1700000000999000LL, err, sizeof err);
    if (!rc) rc = cql_client_wait(c, err, sizeof err);
    if (rc) fprintf(stderr, "cql_frames: %s\n", err);
    for (int i = 0; i < 3; i++) cql_values_free(&items[i]);
    cql_values_free(&v);
    cql_client_free(c);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "codec") == 0) return codec();
    if (argc == 2 && strcmp(argv[1], "tokens") == 0) return tokens();
    if (argc == 5 && strcmp(argv[1], "wire") == 0) return wire(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: cql_frames codec | tokens | wire HOST:PORT USER PASSWORD\n");
    return 2;
}

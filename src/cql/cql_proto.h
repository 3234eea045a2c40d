/*
 * cql_proto.h - the CQL native protocol v4 wire codec, without any I/O.
 *
 * Everything that turns a request into bytes and bytes into a response lives
 * here, as pure functions over buffers, so that it can be held byte for byte
 * against an independent encoder (the DataStax Python driver, see
 * tests/cql/golden_frames.py), unit-tested, and fuzzed (tests/fuzz/
 * fuzz_cql_frame.c) without a socket. The spec is doc/native_protocol_v4.spec
 * in apache/cassandra; section numbers below refer to it.
 *
 * Requests are built into a `buf` (src/common/buf.h) as complete frames;
 * responses are read with the bounds-checked `reader` so that a truncated or
 * hostile frame is reported, never read past.
 */
#ifndef SESSIONIZER_CQL_PROTO_H
#define SESSIONIZER_CQL_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define CQL_VERSION_REQUEST 0x04
#define CQL_VERSION_RESPONSE 0x84
#define CQL_HEADER_SIZE 9
#define CQL_MAX_BODY (256u * 1024u * 1024u) /* section 2.5 */
#define CQL_MAX_STREAMS 32768

/* Frame flags (section 2.2). */
enum {
    CQL_FLAG_COMPRESSION = 0x01,
    CQL_FLAG_TRACING = 0x02,
    CQL_FLAG_CUSTOM_PAYLOAD = 0x04,
    CQL_FLAG_WARNING = 0x08,
};

/* Opcodes (section 2.4). */
enum {
    CQL_OP_ERROR = 0x00,
    CQL_OP_STARTUP = 0x01,
    CQL_OP_READY = 0x02,
    CQL_OP_AUTHENTICATE = 0x03,
    CQL_OP_OPTIONS = 0x05,
    CQL_OP_SUPPORTED = 0x06,
    CQL_OP_QUERY = 0x07,
    CQL_OP_RESULT = 0x08,
    CQL_OP_PREPARE = 0x09,
    CQL_OP_EXECUTE = 0x0A,
    CQL_OP_REGISTER = 0x0B,
    CQL_OP_EVENT = 0x0C,
    CQL_OP_BATCH = 0x0D,
    CQL_OP_AUTH_CHALLENGE = 0x0E,
    CQL_OP_AUTH_RESPONSE = 0x0F,
    CQL_OP_AUTH_SUCCESS = 0x10,
};

/* Consistency levels (section 3). */
enum {
    CQL_CONSISTENCY_ANY = 0x0000,
    CQL_CONSISTENCY_ONE = 0x0001,
    CQL_CONSISTENCY_TWO = 0x0002,
    CQL_CONSISTENCY_THREE = 0x0003,
    CQL_CONSISTENCY_QUORUM = 0x0004,
    CQL_CONSISTENCY_ALL = 0x0005,
    CQL_CONSISTENCY_LOCAL_QUORUM = 0x0006,
    CQL_CONSISTENCY_EACH_QUORUM = 0x0007,
    CQL_CONSISTENCY_SERIAL = 0x0008,
    CQL_CONSISTENCY_LOCAL_SERIAL = 0x0009,
    CQL_CONSISTENCY_LOCAL_ONE = 0x000A,
};

/* Error codes (section 9). */
enum {
    CQL_ERR_SERVER = 0x0000,
    CQL_ERR_PROTOCOL = 0x000A,
    CQL_ERR_BAD_CREDENTIALS = 0x0100,
    CQL_ERR_UNAVAILABLE = 0x1000,
    CQL_ERR_OVERLOADED = 0x1001,
    CQL_ERR_IS_BOOTSTRAPPING = 0x1002,
    CQL_ERR_TRUNCATE = 0x1003,
    CQL_ERR_WRITE_TIMEOUT = 0x1100,
    CQL_ERR_READ_TIMEOUT = 0x1200,
    CQL_ERR_READ_FAILURE = 0x1300,
    CQL_ERR_FUNCTION_FAILURE = 0x1400,
    CQL_ERR_WRITE_FAILURE = 0x1500,
    CQL_ERR_SYNTAX = 0x2000,
    CQL_ERR_UNAUTHORIZED = 0x2100,
    CQL_ERR_INVALID = 0x2200,
    CQL_ERR_CONFIG = 0x2300,
    CQL_ERR_ALREADY_EXISTS = 0x2400,
    CQL_ERR_UNPREPARED = 0x2500,
};

/* RESULT kinds (section 4.2.5). */
enum {
    CQL_RESULT_VOID = 0x0001,
    CQL_RESULT_ROWS = 0x0002,
    CQL_RESULT_SET_KEYSPACE = 0x0003,
    CQL_RESULT_PREPARED = 0x0004,
    CQL_RESULT_SCHEMA_CHANGE = 0x0005,
};

/* Type option ids (section 4.2.5.2). */
enum {
    CQL_TYPE_CUSTOM = 0x0000,
    CQL_TYPE_ASCII = 0x0001,
    CQL_TYPE_BIGINT = 0x0002,
    CQL_TYPE_BLOB = 0x0003,
    CQL_TYPE_BOOLEAN = 0x0004,
    CQL_TYPE_COUNTER = 0x0005,
    CQL_TYPE_DECIMAL = 0x0006,
    CQL_TYPE_DOUBLE = 0x0007,
    CQL_TYPE_FLOAT = 0x0008,
    CQL_TYPE_INT = 0x0009,
    CQL_TYPE_TIMESTAMP = 0x000B,
    CQL_TYPE_UUID = 0x000C,
    CQL_TYPE_VARCHAR = 0x000D,
    CQL_TYPE_VARINT = 0x000E,
    CQL_TYPE_TIMEUUID = 0x000F,
    CQL_TYPE_INET = 0x0010,
    CQL_TYPE_DATE = 0x0011,
    CQL_TYPE_TIME = 0x0012,
    CQL_TYPE_SMALLINT = 0x0013,
    CQL_TYPE_TINYINT = 0x0014,
    CQL_TYPE_LIST = 0x0020,
    CQL_TYPE_MAP = 0x0021,
    CQL_TYPE_SET = 0x0022,
    CQL_TYPE_UDT = 0x0030,
    CQL_TYPE_TUPLE = 0x0031,
};

/* Query flags (section 4.1.4). */
enum {
    CQL_QFLAG_VALUES = 0x01,
    CQL_QFLAG_SKIP_METADATA = 0x02,
    CQL_QFLAG_PAGE_SIZE = 0x04,
    CQL_QFLAG_PAGING_STATE = 0x08,
    CQL_QFLAG_SERIAL_CONSISTENCY = 0x10,
    CQL_QFLAG_DEFAULT_TIMESTAMP = 0x20,
};

enum { CQL_BATCH_LOGGED = 0, CQL_BATCH_UNLOGGED = 1, CQL_BATCH_COUNTER = 2 };

/* Names for messages; "UNKNOWN" for anything else. */
const char *cql_opcode_name(int opcode);
const char *cql_consistency_name(int consistency);
/* Parses "LOCAL_QUORUM", "one", ... ; returns -1 when unknown. */
int cql_consistency_parse(const char *s);
const char *cql_error_name(int32_t code);

/* ---- Frame header (section 2) -------------------------------------------- */

typedef struct cql_header {
    uint8_t version;
    uint8_t flags;
    int16_t stream;
    uint8_t opcode;
    uint32_t length;
} cql_header;

/* Decodes the 9-byte header at p. Returns 0, or -1 (with a reason in err)
 * when the bytes cannot be a v4 response frame: wrong version or direction, or
 * a body longer than the protocol allows. */
int cql_header_decode(const unsigned char *p, cql_header *h, char *err, size_t errlen);
/* Same, for request frames (the test tooling and the fuzzer use it). */
int cql_request_header_decode(const unsigned char *p, cql_header *h, char *err, size_t errlen);

/* Starts a frame at the end of b: writes a header with length 0 and returns
 * the offset of the header, to pass to cql_frame_end once the body is in. */
size_t cql_frame_begin(buf *b, uint8_t opcode, int16_t stream, uint8_t flags);
void cql_frame_end(buf *b, size_t start);
/* Rewrites the stream id of the frame whose header starts at frame. */
void cql_frame_set_stream(unsigned char *frame, int16_t stream);

/* ---- Notations (section 3): big-endian writers --------------------------- */

void cql_put_byte(buf *b, uint8_t v);
void cql_put_short(buf *b, uint16_t v);
void cql_put_int(buf *b, int32_t v);
void cql_put_long(buf *b, int64_t v);
void cql_put_string(buf *b, const char *s, size_t len);      /* [string] */
void cql_put_long_string(buf *b, const char *s, size_t len); /* [long string] */
void cql_put_short_bytes(buf *b, const void *p, size_t len); /* [short bytes] */
void cql_put_bytes(buf *b, const void *p, int32_t len);      /* [bytes]; len < 0: null */
void cql_put_string_list(buf *b, const char *const *items, size_t n);
/* [string map] from n key/value pairs kv[0], kv[1], ... kv[2n-1]. */
void cql_put_string_map(buf *b, const char *const *kv, size_t npairs);

/* Big-endian readers over the project's bounds-checked reader. */
int cql_get_byte(reader *r, uint8_t *out);
int cql_get_short(reader *r, uint16_t *out);
int cql_get_int(reader *r, int32_t *out);
int cql_get_long(reader *r, int64_t *out);
/* [string]: a malloc'd NUL-terminated copy in *out. */
int cql_get_string(reader *r, char **out);
int cql_get_long_string(reader *r, char **out);
/* [bytes]: a view into the reader's memory; *len < 0 means null. */
int cql_get_bytes(reader *r, const unsigned char **p, int32_t *len);
int cql_get_short_bytes(reader *r, const unsigned char **p, uint16_t *len);
int cql_get_string_list(reader *r, char ***out, size_t *n);

/* ---- Bound values (section 6) ------------------------------------------- */

/* A list of bound values as they go on the wire: n [value]s. */
typedef struct cql_values {
    buf b;
    uint16_t n;
} cql_values;

void cql_values_init(cql_values *v);
void cql_values_free(cql_values *v);
void cql_values_reset(cql_values *v);
void cql_values_null(cql_values *v);
void cql_values_unset(cql_values *v);
void cql_values_bigint(cql_values *v, int64_t x); /* also counter, timestamp (ms) */
void cql_values_int(cql_values *v, int32_t x);
void cql_values_boolean(cql_values *v, int x);
void cql_values_text(cql_values *v, const char *s, size_t len); /* text, varchar, ascii, blob */
void cql_values_timestamp(cql_values *v, int64_t ms_since_epoch);
/* list<text> or set<text>: begin, then add each element, then end. */
size_t cql_values_collection_begin(cql_values *v, int32_t n_elements);
void cql_values_collection_text(cql_values *v, const char *s, size_t len);
void cql_values_collection_end(cql_values *v, size_t at);

/* ---- Requests (section 4.1): each appends one complete frame ------------ */

typedef struct cql_query_params {
    uint16_t consistency;
    const cql_values *values;     /* NULL: no Values flag */
    int skip_metadata;
    int32_t page_size;            /* > 0: Page_size flag */
    const unsigned char *paging_state;
    int32_t paging_state_len;     /* with paging_state != NULL */
    uint16_t serial_consistency;  /* 0: none */
    int has_timestamp;
    int64_t timestamp;            /* microseconds */
} cql_query_params;

/* kv: n_pairs key/value pairs, CQL_VERSION among them. */
void cql_encode_startup(buf *b, int16_t stream, const char *const *kv, size_t n_pairs);
void cql_encode_options(buf *b, int16_t stream);
void cql_encode_auth_response(buf *b, int16_t stream, const void *token, int32_t len);
void cql_encode_query(buf *b, int16_t stream, const char *query, size_t qlen,
                      const cql_query_params *qp);
void cql_encode_prepare(buf *b, int16_t stream, const char *query, size_t qlen);
void cql_encode_execute(buf *b, int16_t stream, const unsigned char *id, size_t idlen,
                        const cql_query_params *qp);
void cql_encode_register(buf *b, int16_t stream, const char *const *events, size_t n);

typedef struct cql_batch_item {
    const unsigned char *id; /* prepared id, or NULL for a query string */
    size_t id_len;
    const char *query;
    size_t query_len;
    const cql_values *values;
} cql_batch_item;

typedef struct cql_batch_params {
    uint8_t type; /* CQL_BATCH_* */
    uint16_t consistency;
    uint16_t serial_consistency; /* 0: none */
    int has_timestamp;
    int64_t timestamp; /* microseconds */
} cql_batch_params;

void cql_encode_batch(buf *b, int16_t stream, const cql_batch_item *items, size_t n,
                      const cql_batch_params *bp);

/* The SASL PLAIN initial response for PasswordAuthenticator: "\0user\0password"
 * (RFC 4616 with an empty authorization identity). */
void cql_sasl_plain(buf *out, const char *user, const char *password);

/* ---- Responses (section 4.2) -------------------------------------------- */

typedef struct cql_type {
    uint16_t id;
    char *custom;            /* CQL_TYPE_CUSTOM: class name */
    char *ks, *name;         /* UDT */
    uint16_t n;              /* LIST/SET: 1; MAP: 2; TUPLE/UDT: fields */
    struct cql_type **sub;
    char **field_names;      /* UDT */
} cql_type;

/* Renders a type as CQL ("list<text>", "map<text, bigint>") into out. */
void cql_type_format(const cql_type *t, buf *out);

typedef struct cql_column {
    char *ks, *table, *name;
    cql_type *type;
} cql_column;

typedef struct cql_metadata {
    int32_t flags;
    int32_t n_cols;
    cql_column *cols;           /* NULL with No_metadata */
    const unsigned char *paging_state;
    int32_t paging_state_len;   /* -1: none */
    int32_t n_pk;               /* Prepared bind metadata only */
    uint16_t *pk;
} cql_metadata;

/* A cell of a row: a view into the response body; len < 0 means null. */
typedef struct cql_cell {
    const unsigned char *p;
    int32_t len;
} cql_cell;

typedef struct cql_error {
    int32_t code;
    char *message;
    uint16_t consistency;
    int32_t received, blockfor; /* also required/alive for Unavailable */
    int32_t alive;
    int32_t num_failures;
    uint8_t data_present;
    char *write_type;
    char *keyspace, *table; /* Already_exists; Function_failure: keyspace, table=function */
    const unsigned char *unprepared_id;
    uint16_t unprepared_id_len;
} cql_error;

typedef struct cql_response {
    cql_header h;
    const unsigned char *body; /* the decoded body; valid while the caller keeps it */
    size_t body_len;
    int has_tracing;
    unsigned char tracing_id[16];
    char **warnings;
    size_t n_warnings;

    cql_error error;               /* ERROR */
    char *authenticator;           /* AUTHENTICATE */
    const unsigned char *token;    /* AUTH_CHALLENGE, AUTH_SUCCESS */
    int32_t token_len;
    char **supported_keys;         /* SUPPORTED: keys[i] -> values[i] */
    char ***supported_values;
    size_t *supported_counts;
    size_t n_supported;

    int32_t kind;                  /* RESULT */
    cql_metadata meta;             /* Rows: result metadata; Prepared: bind metadata */
    cql_metadata result_meta;      /* Prepared: result metadata */
    int32_t n_rows;
    cql_cell *cells;               /* n_rows * meta.n_cols */
    char *keyspace;                /* Set_keyspace */
    const unsigned char *prepared_id;
    uint16_t prepared_id_len;
    char *change_type, *target, *sc_keyspace, *sc_name; /* Schema_change, SCHEMA_CHANGE event */

    char *event_type;              /* EVENT */
    char *event_change;            /* NEW_NODE, UP, ... */
    unsigned char event_addr[16];
    uint8_t event_addr_len;
    int32_t event_port;
} cql_response;

/* Decodes a response body (after the header h). The response points into
 * body, which must outlive it. Returns 0, or -1 with err set when the body is
 * malformed; either way call cql_response_free afterwards. */
int cql_response_decode(const cql_header *h, const unsigned char *body, size_t len,
                        cql_response *out, char *err, size_t errlen);
void cql_response_free(cql_response *r);

/* Frame splitting over a byte stream: returns 1 and the header and total
 * frame size when p holds a complete response frame, 0 when more bytes are
 * needed, -1 (err set) when the stream cannot be CQL v4. */
int cql_frame_split(const unsigned char *p, size_t len, cql_header *h, size_t *frame_len,
                    char *err, size_t errlen);

/* ---- Cell decoders (section 6) ------------------------------------------ */

int cql_cell_bigint(const cql_cell *c, int64_t *out);
int cql_cell_int(const cql_cell *c, int32_t *out);
/* text/varchar/ascii/blob: malloc'd NUL-terminated copy (NULL for null). */
int cql_cell_text(const cql_cell *c, char **out);
/* inet: numeric address string. */
int cql_cell_inet(const cql_cell *c, char *out, size_t outlen);
/* uuid/timeuuid: canonical 36-character form. */
int cql_cell_uuid(const cql_cell *c, char out[37]);
/* list/set: the element count and a reader positioned on the first element;
 * then cql_collection_next() yields each element as a cell. */
int cql_collection_open(const cql_cell *c, reader *it, int32_t *n);
int cql_collection_next(reader *it, cql_cell *elem);

#endif

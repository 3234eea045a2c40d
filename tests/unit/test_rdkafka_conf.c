/*
 * test_rdkafka_conf.c - common/rdkafka_conf.h, the one way the Kafka source,
 * the scale-out and the Kafka dead-letter producer set librdkafka properties:
 * a property librdkafka takes is set; one it refuses is reported with the
 * key, the value and librdkafka's reason, the value masked when the key
 * names a secret; KEY=VALUE splits at the first '='; MS properties read
 * alike for the source and the scale-out.
 */
#include <string.h>

#include "check.h"
#include "common/rdkafka_conf.h"

static void test_set(void)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    char err[1024] = "", got[64];
    size_t n = sizeof got;
    CHECK_EQ_I64(rdkafka_conf_set(c, "linger.ms", "7", err, sizeof err), 0);
    CHECK(rd_kafka_conf_get(c, "linger.ms", got, &n) == RD_KAFKA_CONF_OK && strcmp(got, "7") == 0);

    CHECK_EQ_I64(rdkafka_conf_set(c, "no.such.property", "1", err, sizeof err), -1);
    CHECK(strstr(err, "Kafka property -X no.such.property=1: ") == err);
    CHECK(strstr(err, "No such configuration property") != NULL);

    CHECK_EQ_I64(rdkafka_conf_set(c, "linger.ms", "soon", err, sizeof err), -1);
    CHECK(strstr(err, "-X linger.ms=soon: ") != NULL);

    /* a misspelt secret is still a secret */
    CHECK_EQ_I64(rdkafka_conf_set(c, "sasl.pasword.secret", "hunter2", err, sizeof err), -1);
    CHECK(strstr(err, "-X sasl.pasword.secret=<redacted>: ") != NULL);
    CHECK(strstr(err, "hunter2") == NULL);
    rd_kafka_conf_destroy(c);
}

static void test_split(void)
{
    char key[RDKAFKA_KEY_MAX];
    const char *v = rdkafka_prop_split("ssl.ca.location=/a=b", key);
    CHECK(v && strcmp(v, "/a=b") == 0);
    CHECK_STR(key, "ssl.ca.location");
    v = rdkafka_prop_split("=x", key);
    CHECK(v && strcmp(v, "x") == 0 && key[0] == 0);
    CHECK(rdkafka_prop_split("novalue", key) == NULL);
    char long_prop[600];
    memset(long_prop, 'k', 500);
    strcpy(long_prop + 500, "=v");
    v = rdkafka_prop_split(long_prop, key);
    CHECK(v && strcmp(v, "v") == 0 && strlen(key) == RDKAFKA_KEY_MAX - 1);
}

/* -X sessionizer.idle.ms= and the like: one reading for the Kafka source
 * and the scale-out (which took "2s" for 2 ms). */
static void test_ms(void)
{
    int64_t ms = -7;
    CHECK_EQ_I64(rdkafka_parse_ms("0", &ms), 0);
    CHECK_EQ_I64(ms, 0);
    CHECK_EQ_I64(rdkafka_parse_ms("86400000", &ms), 0);
    CHECK_EQ_I64(ms, 86400000);
    CHECK_EQ_I64(rdkafka_parse_ms("86400001", &ms), -1);
    CHECK_EQ_I64(rdkafka_parse_ms("2s", &ms), -1);
    CHECK_EQ_I64(rdkafka_parse_ms("-1", &ms), -1);
    CHECK_EQ_I64(rdkafka_parse_ms("", &ms), -1);
    CHECK_EQ_I64(rdkafka_parse_ms("99999999999999999999", &ms), -1);
    char err[256] = "";
    ms = 2000;
    const char *none[] = {"sessionizer.idle.msx=5", "linger.ms=5", NULL};
    CHECK_EQ_I64(rdkafka_prop_ms(none, "sessionizer.idle.ms", &ms, err, sizeof err), 0);
    CHECK_EQ_I64(ms, 2000);
    const char *two[] = {"sessionizer.idle.ms=5", "sessionizer.idle.ms=300", NULL};
    CHECK_EQ_I64(rdkafka_prop_ms(two, "sessionizer.idle.ms", &ms, err, sizeof err), 0);
    CHECK_EQ_I64(ms, 300);
    const char *bad[] = {"sessionizer.idle.ms=2s", NULL};
    CHECK_EQ_I64(rdkafka_prop_ms(bad, "sessionizer.idle.ms", &ms, err, sizeof err), -1);
    CHECK_STR(err, "-X sessionizer.idle.ms=2s: expected milliseconds (0 to 86400000)");
}

int main(void)
{
    test_set();
    test_split();
    test_ms();
    return check_summary("test_rdkafka_conf");
}

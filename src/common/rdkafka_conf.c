/*
 * rdkafka_conf.c - setting librdkafka properties (rdkafka_conf.h).
 */
#include "common/rdkafka_conf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/secret.h"

int rdkafka_conf_set(rd_kafka_conf_t *c, const char *key, const char *value, char *err,
                     size_t errlen)
{
    char why[512];
    if (rd_kafka_conf_set(c, key, value, why, sizeof why) == RD_KAFKA_CONF_OK) return 0;
    /* a misspelt "sasl.pasword" is no secret to librdkafka, but may hold one */
    int masked = secret_key_is_sensitive(key, strlen(key));
    snprintf(err, errlen, "Kafka property -X %s=%s: %s", key, masked ? "<redacted>" : value,
             why);
    return -1;
}

int rdkafka_parse_ms(const char *v, int64_t *out)
{
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || end == v || *end || n < 0 || n > 86400000LL) return -1;
    *out = n;
    return 0;
}

int rdkafka_prop_ms(const char *const *props, const char *key, int64_t *ms, char *err,
                    size_t errlen)
{
    size_t kl = strlen(key);
    for (const char *const *p = props; p && *p; p++) {
        if (strncmp(*p, key, kl) != 0 || (*p)[kl] != '=') continue;
        if (rdkafka_parse_ms(*p + kl + 1, ms)) {
            snprintf(err, errlen, "-X %s=%s: expected milliseconds (0 to 86400000)", key,
                     *p + kl + 1);
            return -1;
        }
    }
    return 0;
}

const char *rdkafka_prop_split(const char *prop, char key[RDKAFKA_KEY_MAX])
{
    const char *eq = strchr(prop, '=');
    if (!eq) return NULL;
    snprintf(key, RDKAFKA_KEY_MAX, "%.*s", (int)(eq - prop), prop);
    return eq + 1;
}

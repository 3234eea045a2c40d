/*
 * rdkafka_conf.c - setting librdkafka properties (rdkafka_conf.h).
 */
#include "common/rdkafka_conf.h"

#include <stdio.h>
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

const char *rdkafka_prop_split(const char *prop, char key[RDKAFKA_KEY_MAX])
{
    const char *eq = strchr(prop, '=');
    if (!eq) return NULL;
    snprintf(key, RDKAFKA_KEY_MAX, "%.*s", (int)(eq - prop), prop);
    return eq + 1;
}

/*
 * test_context.c - the job context owns what is lent through it: the Kafka
 * cluster a source lends stays readable after the lender's own strings are
 * gone (a dead-letter output may outlive the source), a second lend replaces
 * the first, and a context without one says so.
 */
#include <stdlib.h>

#include "check.h"
#include "common/context.h"
#include "common/xalloc.h"

int main(void)
{
    job_context ctx = {0};
    CHECK(job_context_kafka(&ctx) == NULL);
    CHECK(job_context_kafka(NULL) == NULL);

    char *brokers = xstrdup("127.0.0.1:9092,127.0.0.1:9093");
    char *p0 = xstrdup("security.protocol=SASL_SSL"), *p1 = xstrdup("client.id=x");
    const char *props[] = {p0, p1, NULL};
    job_context_lend_kafka(&ctx, brokers, props);
    free(brokers); /* the lender closes */
    free(p0);
    free(p1);
    const kafka_cluster *k = job_context_kafka(&ctx);
    CHECK(k != NULL);
    if (k) {
        CHECK_STR(k->bootstrap, "127.0.0.1:9092,127.0.0.1:9093");
        CHECK_STR(k->props[0], "security.protocol=SASL_SSL");
        CHECK_STR(k->props[1], "client.id=x");
        CHECK(k->props[2] == NULL);
    }

    job_context_lend_kafka(&ctx, "h:1", NULL);
    k = job_context_kafka(&ctx);
    CHECK(k && strcmp(k->bootstrap, "h:1") == 0 && k->props && k->props[0] == NULL);

    job_context_release(&ctx);
    CHECK(job_context_kafka(&ctx) == NULL);
    job_context_release(&ctx); /* twice is harmless */
    return check_summary("test_context");
}

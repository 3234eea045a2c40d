/*
 * test_kafka_parts.c - the Kafka source's count of partitions done with
 * --until-end (src/source/kafka_group.c, kafka.c), which decides when the run
 * ends: it is the number of partitions whose position reached their end,
 * whatever order partitions are added, assigned and reach their end in. A
 * partition added to the topic during the run has nothing to read for
 * --until-end (it was empty at the start), so it is done at once, and its
 * end-of-partition event does not count it a second time: that made the run
 * end while another partition still had records before its end.
 */
#include <stdlib.h>

#include "check.h"
#include "common/xalloc.h"
#include "source/kafka_internal.h"

static int32_t really_done(const kafka_source *ks)
{
    int32_t n = 0;
    for (int32_t p = 0; p < ks->n_parts; p++) n += ks->parts[p].pos >= ks->parts[p].end;
    return n;
}

static void test_added_partition(void)
{
    kafka_source *ks = xcalloc(1, sizeof *ks);
    ks->until_end = 1;
    /* open: two partitions, ends 5 and 8, read from 0 */
    kafka_grow_parts(ks, 2);
    for (int32_t p = 0; p < 2; p++) {
        ks->parts[p].end = p ? 8 : 5;
        ks->parts[p].pos = 0;
        ks->parts[p].assigned = 1;
    }
    ks->done = 0;
    /* partition 0 reaches its end */
    kafka_partition_eof(ks, &ks->parts[0], 5);
    CHECK_EQ_I64(ks->done, 1);
    CHECK_EQ_I64(ks->done, really_done(ks));

    /* a rebalance brings partition 2, added to the topic since the start */
    kafka_grow_parts(ks, 3);
    CHECK_EQ_I64(ks->done, 2); /* nothing of it to read */
    ks->parts[2].assigned = 1;
    /* the fetcher reports the end of the new, empty partition */
    kafka_partition_eof(ks, &ks->parts[2], 0);
    CHECK_EQ_I64(ks->done, 2);
    CHECK_EQ_I64(ks->done, really_done(ks));
    CHECK(ks->done < ks->n_parts); /* partition 1 still has records to read */
    /* and records were written to it since: still nothing for this run */
    kafka_partition_eof(ks, &ks->parts[2], 40);
    CHECK_EQ_I64(ks->done, 2);

    kafka_partition_eof(ks, &ks->parts[1], 8);
    CHECK_EQ_I64(ks->done, 3);
    CHECK_EQ_I64(ks->done, really_done(ks));
    free(ks->parts);
    free(ks);
}

/* Live (no --until-end): no partition is ever done, and an added one is
 * read from its start. */
static void test_live(void)
{
    kafka_source *ks = xcalloc(1, sizeof *ks);
    kafka_grow_parts(ks, 1);
    ks->parts[0].assigned = 1;
    kafka_grow_parts(ks, 2);
    ks->parts[1].assigned = 1;
    CHECK_EQ_I64(ks->parts[1].pos, OFFSET_UNKNOWN);
    kafka_partition_eof(ks, &ks->parts[1], 3);
    CHECK_EQ_I64(ks->parts[1].pos, 3);
    CHECK_EQ_I64(ks->parts[1].eof_at, 3);
    CHECK_EQ_I64(ks->done, 0);
    free(ks->parts);
    free(ks);
}

int main(void)
{
    test_added_partition();
    test_live();
    return check_summary("test_kafka_parts");
}

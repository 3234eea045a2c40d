/*
 * murmur3.h - the token of a partition key under Murmur3Partitioner.
 *
 * Token-aware routing sends each write straight to a replica of its
 * partition, saving the coordinator hop. Cassandra and ScyllaDB place
 * partitions on the ring by the first 64 bits of MurmurHash3_x64_128 (seed
 * 0) of the serialized partition key, computed by Cassandra's own port of the
 * hash, which sign-extends the tail bytes (Java bytes are signed). That quirk
 * is reproduced here; tests/cql/test_cql_golden.py holds the result against
 * the Python driver's murmur3.
 */
#ifndef SESSIONIZER_CQL_MURMUR3_H
#define SESSIONIZER_CQL_MURMUR3_H

#include <stddef.h>
#include <stdint.h>

/* The Murmur3Partitioner token of key (INT64_MIN is mapped to INT64_MAX,
 * as Cassandra does, since INT64_MIN is the ring's minimum token). */
int64_t cql_murmur3_token(const void *key, size_t len);

#endif

/*
 * appendfile.h - an append-only output file that a checkpoint can rewind.
 *
 * Used by the JSONL sink and the JSONL dead-letter output. The checkpoint
 * stores the file's length at each commit; on restart the file is truncated
 * back to it, so that lines written after the last commit (and about to be
 * written again by the replay) appear once, not twice. Standard output and
 * standard error cannot be rewound: they are at-least-once.
 */
#ifndef SESSIONIZER_APPENDFILE_H
#define SESSIONIZER_APPENDFILE_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

typedef struct appendfile {
    int fd;
    int rewindable; /* a regular file we opened, as opposed to stdout/stderr */
    char *name;
    buf pending;    /* written, not yet flushed */
    int64_t size;   /* bytes durably written (after the last flush) */
} appendfile;

/* path "-" is standard output, "stderr" standard error. */
int appendfile_open(appendfile *f, const char *path, char *err, size_t errlen);
static inline buf *appendfile_buf(appendfile *f) { return &f->pending; }
/* Writes what is pending and, for a regular file, fsyncs it. */
int appendfile_flush(appendfile *f, char *err, size_t errlen);
void appendfile_save(const appendfile *f, buf *out);
int appendfile_restore(appendfile *f, const void *state, size_t len, char *err, size_t errlen);
void appendfile_close(appendfile *f);

#endif

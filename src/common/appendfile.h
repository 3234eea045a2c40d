/*
 * appendfile.h - an append-only output file that a checkpoint can rewind.
 *
 * Used by the JSONL sink and the JSONL dead-letter output. The checkpoint
 * stores the file's length at each commit; on restart the file is truncated
 * back to it, so that lines written after the last commit (and about to be
 * written again by the replay) appear once, not twice. Standard output and
 * standard error cannot be rewound: they are at-least-once.
 *
 * A file is only ever cut where this writer wrote: the checkpoint also stores
 * the file's identity (device and inode) and a rewind is refused when the file
 * at the path is another one; a last line without its newline is removed at
 * open only when it is the beginning of one of this writer's lines (a write
 * cut by a crash), otherwise it is kept and a newline ends it before the
 * first new line.
 */
#ifndef SESSIONIZER_APPENDFILE_H
#define SESSIONIZER_APPENDFILE_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

typedef struct appendfile {
    int fd;
    int rewindable; /* a regular file we opened, as opposed to stdout/stderr */
    char *name;     /* as given, for messages */
    char *identity; /* the output's identity: see appendfile_identity */
    uint64_t dev, ino; /* the file opened (rewindable only) */
    int unterminated; /* the file ends in a foreign line without its newline */
    buf pending;    /* written, not yet flushed */
    int64_t size;   /* bytes durably written (after the last flush) */
    int synced;     /* nothing written, cut or rewound since the last fsync */
} appendfile;

/* path "-" (or "stdout") is standard output, "stderr" standard error.
 * Every line this writer appends starts with line_prefix (for example
 * "{\"reason\":"): that is how a line cut by a crash is told from another
 * writer's line. */
int appendfile_open(appendfile *f, const char *path, const char *line_prefix, char *err,
                    size_t errlen);
static inline buf *appendfile_buf(appendfile *f) { return &f->pending; }
/* Writes what is pending and, for a regular file, fsyncs it. */
int appendfile_flush(appendfile *f, char *err, size_t errlen);
/* What a checkpoint is bound to: "jsonl:" and the file's real path (a
 * symlink or a relative path to the same file is the same output), or
 * "jsonl:-" / "jsonl:stderr"; itself a URI that names the output. */
void appendfile_identity(const appendfile *f, buf *out);
void appendfile_save(const appendfile *f, buf *out);
/* Rewinds to the saved length; refuses (and leaves the file alone) when the
 * file is not the one saved, or is shorter than the saved length. */
int appendfile_restore(appendfile *f, const void *state, size_t len, char *err, size_t errlen);
void appendfile_close(appendfile *f);

#endif

/*
 * test_source.c - the file source's stream, marks included (source.h): the
 * first poll marks partition 0 not caught up, the records follow in order,
 * and the end of the file is marked caught up at its length just before
 * SOURCE_END; a resumed source marks again from its resumed position.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "source/source.h"

/* Polls to the end; fills kinds ('M' mark up, 'm' mark down, 'R' record, 'E')
 * and the marks' positions. */
static void stream(source *s, char *kinds, size_t cap, int64_t *mark_pos)
{
    size_t n = 0, nm = 0;
    char err[256];
    for (;;) {
        raw_record rec;
        source_mark mark;
        int st = s->ops->poll(s, &rec, &mark, 10, err, sizeof err);
        CHECK(st != SOURCE_ERROR && st != SOURCE_IDLE);
        if (st == SOURCE_ERROR || st == SOURCE_IDLE || n + 2 >= cap) break;
        if (st == SOURCE_MARK) {
            CHECK_EQ_I64(mark.partition, 0);
            kinds[n++] = mark.caught_up ? 'M' : 'm';
            mark_pos[nm++] = mark.position;
        } else if (st == SOURCE_RECORD) {
            kinds[n++] = 'R';
        } else {
            kinds[n++] = 'E';
            break;
        }
    }
    kinds[n] = 0;
}

int main(void)
{
    char path[] = "/tmp/test_source_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    const char text[] = "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n"; /* 8 bytes a line */
    CHECK(write(fd, text, sizeof text - 1) == (ssize_t)(sizeof text - 1));
    close(fd);
    char uri[64], err[256], kinds[32];
    int64_t pos[8] = {0};
    snprintf(uri, sizeof uri, "file:%s", path);
    source_options so = {0};

    source *s = source_open(uri, &so, err, sizeof err);
    CHECK(s != NULL);
    if (!s) return check_summary("test_source");
    stream(s, kinds, sizeof kinds, pos);
    CHECK_STR(kinds, "mRRRME");
    CHECK_EQ_I64(pos[0], 0);
    CHECK_EQ_I64(pos[1], 24);
    buf at;
    buf_init(&at);
    s->ops->position(s, &at);
    s->ops->close(s);

    /* Resumed after the first line: marks speak of the resumed position. */
    buf one;
    buf_init(&one);
    buf_put_i64le(&one, 8);
    buf_put_i64le(&one, 1);
    s = source_open(uri, &so, err, sizeof err);
    CHECK(s && s->ops->seek(s, one.data, one.len, err, sizeof err) == 0);
    stream(s, kinds, sizeof kinds, pos);
    CHECK_STR(kinds, "mRRME");
    CHECK_EQ_I64(pos[0], 8);
    CHECK_EQ_I64(pos[1], 24);
    s->ops->close(s);

    /* Resumed at the end: nothing to deliver, but both marks still come. */
    s = source_open(uri, &so, err, sizeof err);
    CHECK(s && s->ops->seek(s, at.data, at.len, err, sizeof err) == 0);
    stream(s, kinds, sizeof kinds, pos);
    CHECK_STR(kinds, "mME");
    s->ops->close(s);

    buf_free(&one);
    buf_free(&at);
    unlink(path);
    return check_summary("test_source");
}

/*
 * sqlite_path.h - the one rule for a path that sessionizer hands to SQLite
 * (the sqlite: sink's database, the checkpoint directory's checkpoint.db).
 *
 * Debian's SQLite is built with SQLITE_USE_URI=1, so a name starting with
 * "file:" is read as a URI whatever the open flags say: "file:ck/x.db" opens
 * "ck/x.db", "file:x?mode=memory" an in-memory database. A path that
 * sessionizer also uses itself (the checkpoint's lock file) would then name
 * another place than the database, and an output would silently vanish. So
 * such a path is refused, with the spelling that means the file of that name
 * ("./file:..."), which SQLite never reads as a URI.
 */
#ifndef SESSIONIZER_SQLITE_PATH_H
#define SESSIONIZER_SQLITE_PATH_H

#include <string.h>

/* 1 if SQLite would read path as a URI rather than as a file name. SQLite
 * compares the prefix case-sensitively (sqlite3ParseUri). */
static inline int sqlite_path_is_uri(const char *path)
{
    return strncmp(path, "file:", 5) == 0;
}

#endif

/*
 * utf8.h - strict UTF-8 validation (no overlongs, no surrogates, <= U+10FFFF).
 */
#ifndef SESSIONIZER_UTF8_H
#define SESSIONIZER_UTF8_H

#include <stddef.h>

int utf8_valid(const char *s, size_t len);

#endif

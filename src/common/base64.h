/* Standard base64 (RFC 4648 section 4), as used by the deploy API and the VM channel. */
#ifndef STOKE_BASE64_H
#define STOKE_BASE64_H

#include <stddef.h>

/* Bytes needed to encode len bytes, terminating NUL included. */
size_t b64_encoded_len(size_t len);
/* Writes NUL-terminated base64 of src into dst (b64_encoded_len(len) bytes). */
void b64_encode(const void *src, size_t len, char *dst);
/*
 * Decodes src (padding optional, whitespace ignored) into dst, which must hold
 * len * 3 / 4 + 3 bytes. Returns the decoded length, or -EINVAL on a bad character
 * or a truncated group.
 */
long b64_decode(const char *src, size_t len, void *dst);

#endif

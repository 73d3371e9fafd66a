/* Standard base64 (RFC 4648 section 4, with padding), the encoding of deployed files. */
#ifndef STOKE_CLI_BASE64_H
#define STOKE_CLI_BASE64_H

#include <stddef.h>

#include "common/strbuf.h"

/* Appends the encoding of in[0..len) to out. Failure shows as sb_failed(out). */
void cli_b64_encode(const void *in, size_t len, struct strbuf *out);

#endif

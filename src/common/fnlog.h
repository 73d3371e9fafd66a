/* Where fnlog_write() (declared in invoke.h) sends lines. Without a sink: stderr. */
#ifndef STOKE_FNLOG_H
#define STOKE_FNLOG_H

#include <stddef.h>

typedef void (*fnlog_sink_fn)(const char *fn_name, const char *request_id,
			      const char *stream, const char *msg, size_t len);
void fnlog_set_sink(fnlog_sink_fn sink);

#endif

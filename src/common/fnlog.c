/* Function log streams: tiers write here; the gateway installs the real sink. */
#include "invoke.h"
#include "fnlog.h"

#include <stdio.h>

static fnlog_sink_fn fnlog_sink;

void fnlog_set_sink(fnlog_sink_fn sink)
{
	fnlog_sink = sink;
}

void fnlog_write(const char *fn_name, const char *request_id, const char *stream,
		 const char *msg, size_t len)
{
	if (fnlog_sink) {
		fnlog_sink(fn_name, request_id, stream, msg, len);
		return;
	}
	fprintf(stderr, "[%s %s %s] %.*s\n", fn_name, request_id ? request_id : "-", stream,
		(int)len, msg);
}

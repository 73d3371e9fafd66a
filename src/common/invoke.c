/* Response builders and reference counting shared by the gateway and the tiers. */
#include "invoke.h"
#include "strbuf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static void (*fn_release_hook)(struct fn *fn);

void fn_set_release_hook(void (*hook)(struct fn *fn))
{
	fn_release_hook = hook;
}

struct fn *fn_ref(struct fn *fn)
{
	atomic_fetch_add(&fn->refs, 1);
	return fn;
}

void fn_unref(struct fn *fn)
{
	size_t i;

	if (!fn || atomic_fetch_sub(&fn->refs, 1) != 1)
		return;
	if (fn_release_hook)
		fn_release_hook(fn);
	for (i = 0; i < fn->nenv; i++) {
		free(fn->env[i].name);
		free(fn->env[i].value);
	}
	free(fn->env);
	free(fn->dir);
	free(fn);
}

static char *memdup0(const char *s, size_t len)
{
	char *p = malloc(len + 1);

	if (p) {
		memcpy(p, s, len);
		p[len] = '\0';
	}
	return p;
}

int inv_resp_add_header(struct inv *inv, const char *name, size_t nlen,
			const char *value, size_t vlen)
{
	struct inv_response *r = &inv->resp;
	struct kv *h = realloc(r->headers, (r->nheaders + 1) * sizeof(*h));

	if (!h)
		return -ENOMEM;
	r->headers = h;
	h += r->nheaders;
	h->name = memdup0(name, nlen);
	h->value = memdup0(value, vlen);
	if (!h->name || !h->value) {
		free(h->name);
		free(h->value);
		return -ENOMEM;
	}
	h->name_len = nlen;
	h->value_len = vlen;
	r->nheaders++;
	return 0;
}

void inv_resp_set_body(struct inv *inv, char *body, size_t len)
{
	free(inv->resp.body);
	inv->resp.body = body;
	inv->resp.body_len = len;
}

static void inv_resp_clear(struct inv_response *r)
{
	size_t i;

	for (i = 0; i < r->nheaders; i++) {
		free(r->headers[i].name);
		free(r->headers[i].value);
	}
	free(r->headers);
	free(r->body);
	memset(r, 0, sizeof(*r));
}

void inv_error_json(struct strbuf *sb, const char *kind, const char *msg,
		    const char *request_id)
{
	sb_adds(sb, "{\"error\":");
	sb_json_str(sb, kind, strlen(kind));
	sb_adds(sb, ",\"message\":");
	sb_json_str(sb, msg, strlen(msg));
	sb_adds(sb, ",\"request_id\":");
	sb_json_str(sb, request_id, strlen(request_id));
	sb_adds(sb, "}\n");
}

void inv_fail(struct inv *inv, int status, const char *kind, const char *fmt, ...)
{
	struct strbuf msg = STRBUF_INIT, body = STRBUF_INIT;
	static const char ctype[] = "application/json";
	va_list ap;

	va_start(ap, fmt);
	sb_vprintf(&msg, fmt, ap);
	va_end(ap);
	inv_resp_clear(&inv->resp);
	inv_error_json(&body, kind, msg.buf ? msg.buf : "", inv->request_id);
	sb_free(&msg);
	inv->resp.status = status;
	inv->resp.error_kind = kind;
	inv_resp_add_header(inv, "content-type", 12, ctype, sizeof(ctype) - 1);
	inv->resp.body = sb_detach(&body, &inv->resp.body_len);
}

void inv_done(struct inv *inv)
{
	inv->on_done(inv);
}

void inv_free(struct inv *inv)
{
	size_t i;

	if (!inv)
		return;
	inv_resp_clear(&inv->resp);
	for (i = 0; i < inv->req.nheaders; i++) {
		free(inv->req.headers[i].name);
		free(inv->req.headers[i].value);
	}
	free(inv->req.headers);
	free((char *)inv->req.method);
	free((char *)inv->req.path);
	free((char *)inv->req.query);
	free((char *)inv->req.url);
	free((char *)inv->req.body);
	fn_unref(inv->fn);
	free(inv);
}

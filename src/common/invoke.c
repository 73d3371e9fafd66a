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

/* The header array grows to 4, 8, 16... entries: one realloc for most responses. */
static int inv_resp_reserve(struct inv_response *r)
{
	size_t n = r->nheaders;
	struct kv *h;

	if (n && (n < 4 || (n & (n - 1))))
		return 0;
	h = realloc(r->headers, (n < 4 ? 4 : 2 * n) * sizeof(*h));
	if (!h)
		return -ENOMEM;
	r->headers = h;
	return 0;
}

/*
 * A header is one allocation, the value right after the name's NUL: responses are
 * built on a tier's thread and freed on the gateway's, where every allocation costs
 * a trip through the allocator's cross-thread path.
 */
int inv_resp_add_header(struct inv *inv, const char *name, size_t nlen,
			const char *value, size_t vlen)
{
	struct inv_response *r = &inv->resp;
	struct kv *h;
	char *p;

	if (inv_resp_reserve(r) || !(p = malloc(nlen + vlen + 2)))
		return -ENOMEM;
	h = &r->headers[r->nheaders];
	memcpy(p, name, nlen);
	p[nlen] = '\0';
	memcpy(p + nlen + 1, value, vlen);
	p[nlen + 1 + vlen] = '\0';
	h->name = p;
	h->value = p + nlen + 1;
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

	for (i = 0; i < r->nheaders; i++)
		free(r->headers[i].name);	/* the value shares its allocation */
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
	if (inv->req_packed) {
		fn_unref(inv->fn);
		free(inv);
		return;
	}
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

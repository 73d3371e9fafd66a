/*
 * One request/response exchange with a running VM over the channel (frames as in
 * docs/channel-abi.md), while the guest's stdout and stderr stream to the function log.
 */
#include "vm_proc.h"
#include "frame.h"
#include "common/base64.h"
#include "common/invoke.h"
#include "common/strbuf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Length of the valid UTF-8 character at s (1-4), or 0 if invalid or cut short. */
static size_t utf8_char(const unsigned char *s, size_t n)
{
	unsigned c = s[0];
	size_t len, k;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		len = 2;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4;
	else
		return 0;
	if (len > n)
		return 0;
	/* no overlong forms, surrogates or code points past U+10FFFF */
	if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0) ||
	    (c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] >= 0x90))
		return 0;
	for (k = 1; k < len; k++)
		if ((s[k] & 0xc0) != 0x80)
			return 0;
	return len;
}

static int utf8_valid(const unsigned char *s, size_t n)
{
	size_t i = 0, len;

	while (i < n) {
		len = utf8_char(s + i, n - i);
		if (!len)
			return 0;
		i += len;
	}
	return 1;
}

static void add_body(struct strbuf *sb, const char *body, size_t len)
{
	char *b64;

	if (utf8_valid((const unsigned char *)body, len)) {
		sb_adds(sb, ",\"body\":");
		sb_json_str(sb, body, len);
		sb_adds(sb, ",\"body_encoding\":\"utf8\"");
		return;
	}
	b64 = malloc(b64_encoded_len(len));
	if (!b64) {
		sb->failed = 1;
		return;
	}
	b64_encode(body, len, b64);
	sb_adds(sb, ",\"body\":\"");
	sb_adds(sb, b64);
	sb_adds(sb, "\",\"body_encoding\":\"base64\"");
	free(b64);
}

static void add_field(struct strbuf *sb, const char *name, const char *val)
{
	sb_printf(sb, ",\"%s\":", name);
	sb_json_str(sb, val ? val : "", val ? strlen(val) : 0);
}

/*
 * Builds the request frame: header then JSON. deadline_ms is the function's own limit
 * from now (the VMM starts the same clock when the guest reads the request), not the
 * daemon's backstop, which adds grace and a cold start's boot time.
 * Returns NULL on allocation failure.
 */
static char *request_frame(struct inv *inv, uint32_t wall_ms, size_t *len)
{
	struct strbuf sb = STRBUF_INIT;
	struct timespec now;
	size_t i;
	char *out;

	clock_gettime(CLOCK_REALTIME, &now);
	sb_add(&sb, "\0\0\0\0\0\0\0\0", FRAME_HDR_SIZE);
	sb_adds(&sb, "{\"request_id\":");
	sb_json_str(&sb, inv->request_id, strlen(inv->request_id));
	add_field(&sb, "function", inv->fn->name);
	sb_printf(&sb, ",\"version\":%lld,\"memory_limit_mb\":%u,\"deadline_ms\":%lld",
		  (long long)inv->fn->version, inv->fn->limits.memory_mb,
		  wall_ms ? (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000 + wall_ms : 0);
	add_field(&sb, "method", inv->req.method);
	add_field(&sb, "path", inv->req.path);
	add_field(&sb, "query", inv->req.query);
	add_field(&sb, "url", inv->req.url);
	sb_adds(&sb, ",\"headers\":[");
	for (i = 0; i < inv->req.nheaders; i++) {
		struct kv *h = &inv->req.headers[i];

		sb_adds(&sb, i ? ",[" : "[");
		sb_json_str(&sb, h->name, h->name_len);
		sb_adds(&sb, ",");
		sb_json_str(&sb, h->value, h->value_len);
		sb_adds(&sb, "]");
	}
	sb_adds(&sb, "]");
	add_body(&sb, inv->req.body ? inv->req.body : "", inv->req.body_len);
	sb_adds(&sb, "}");
	out = sb_detach(&sb, len);
	if (out)
		frame_hdr_pack((uint8_t *)out, (uint32_t)(*len - FRAME_HDR_SIZE), FRAME_REQUEST);
	return out;
}

/* RFC 9110 section 5.1: a field name is a token. */
static int header_name_ok(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (!strchr("!#$%&'*+-.^_`|~", *s) && !(*s >= '0' && *s <= '9') &&
		    !(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z'))
			return 0;
	return 1;
}

/* No CR or LF: a value must not end the header line it is written into. */
static int header_value_ok(const char *s)
{
	return !strpbrk(s, "\r\n");
}

static int set_headers(struct inv *inv, cJSON *headers)
{
	cJSON *h;
	int r = 0;

	cJSON_ArrayForEach(h, headers) {
		const char *name = h->string, *val;

		if (cJSON_IsArray(h) && cJSON_GetArraySize(h) == 2) {	/* [name, value] */
			name = cJSON_GetStringValue(cJSON_GetArrayItem(h, 0));
			val = cJSON_GetStringValue(cJSON_GetArrayItem(h, 1));
		} else {
			val = cJSON_GetStringValue(h);
		}
		if (name && val && (!header_name_ok(name) || !header_value_ok(val)))
			return -EINVAL;
		if (name && val)
			r = inv_resp_add_header(inv, name, strlen(name), val, strlen(val));
		if (r)
			return r;
	}
	return 0;
}

static int set_body(struct inv *inv, cJSON *body, int b64)
{
	const char *s = cJSON_GetStringValue(body);
	size_t n = s ? strlen(s) : 0;
	char *out = malloc(n * 3 / 4 + 4);
	long got;

	if (!out)
		return -ENOMEM;
	if (b64) {
		got = b64_decode(s ? s : "", n, out);
		if (got < 0) {
			free(out);
			return -EINVAL;
		}
		n = (size_t)got;
	} else {
		free(out);
		out = malloc(n + 1);
		if (!out)
			return -ENOMEM;
		memcpy(out, s ? s : "", n + 1);
	}
	inv_resp_set_body(inv, out, n);
	return 0;
}

/* Fills inv->resp from a response frame; a malformed one becomes a 502. */
static void take_response(struct inv *inv, const char *json, size_t len)
{
	cJSON *j = cJSON_ParseWithLength(json, len), *st, *b64;
	int r = -EINVAL;

	st = cJSON_GetObjectItemCaseSensitive(j, "statusCode");
	/* 1xx is never a final answer (RFC 9110 section 15.2). */
	if (cJSON_IsNumber(st) && st->valueint >= 200 && st->valueint <= 599) {
		inv->resp.status = st->valueint;
		r = set_headers(inv, cJSON_GetObjectItemCaseSensitive(j, "headers"));
		b64 = cJSON_GetObjectItemCaseSensitive(j, "isBase64Encoded");
		if (!r)
			r = set_body(inv, cJSON_GetObjectItemCaseSensitive(j, "body"),
				     cJSON_IsTrue(b64));
	}
	cJSON_Delete(j);
	if (r)
		inv_fail(inv, 502, "bad_response", "the function's runtime sent a malformed "
			 "response frame");
}

static void keep_tail(struct vm_proc *p, const char *buf, size_t n)
{
	size_t keep = n >= sizeof(p->tail) ? sizeof(p->tail) - 1 : n, drop;

	if (p->tail_len + keep >= sizeof(p->tail)) {
		drop = p->tail_len + keep - (sizeof(p->tail) - 1);
		memmove(p->tail, p->tail + drop, p->tail_len - drop);
		p->tail_len -= drop;
	}
	memcpy(p->tail + p->tail_len, buf + n - keep, keep);
	p->tail_len += keep;
	p->tail[p->tail_len] = '\0';
}

static const char *const stream_names[2] = { "stdout", "stderr" };

/*
 * Logs one line as valid UTF-8 without NUL (the log is served as JSON): bytes that are
 * not UTF-8, and NUL, become U+FFFD.
 */
static void log_line(const struct vm_logto *to, int s, const char *line, size_t n)
{
	const unsigned char *in = (const unsigned char *)line;
	char *out;
	size_t i = 0, o = 0, len;

	if (!to || !(out = malloc(n * 3 + 1)))
		return;
	while (i < n) {
		len = in[i] ? utf8_char(in + i, n - i) : 0;
		if (len) {
			memcpy(out + o, in + i, len);
			o += len;
			i += len;
		} else {
			memcpy(out + o, "\xef\xbf\xbd", 3);
			o += 3;
			i++;
		}
	}
	fnlog_write(to->name, to->request_id, stream_names[s], out, o);
	free(out);
}

/* Logs the partial line of stream s (stdout 0, stderr 1), if any. */
static void flush_line(struct vm_proc *p, int s, const struct vm_logto *to)
{
	if (!p->line_len[s])
		return;
	log_line(to, s, p->line[s], p->line_len[s]);
	p->line_len[s] = 0;
}

void vm_proc_flush_output(struct vm_proc *p, const struct vm_logto *to)
{
	flush_line(p, 0, to);
	flush_line(p, 1, to);
}

/* A full line buffer is logged up to its last whole character; the rest stays. */
static void flush_full(struct vm_proc *p, int s, const struct vm_logto *to)
{
	const unsigned char *b = (const unsigned char *)p->line[s];
	size_t n = p->line_len[s], cut = n, back;

	for (back = 1; back <= 3 && back <= n; back++) {
		unsigned c = b[n - back];

		if ((c & 0xc0) == 0x80)
			continue;
		if (c >= 0xc0 && !utf8_char(b + n - back, back))
			cut = n - back;	/* a character cut short by the buffer's end */
		break;
	}
	if (cut == 0)
		cut = n;
	log_line(to, s, p->line[s], cut);
	memmove(p->line[s], p->line[s] + cut, n - cut);
	p->line_len[s] = n - cut;
}

/*
 * A guest writes output in pieces (print() in an unbuffered Python is one write per
 * argument): join them into whole lines, one log entry each, newline dropped. Lines
 * longer than the buffer are logged in buffer-sized parts, split between characters.
 */
static void add_output(struct vm_proc *p, int s, const struct vm_logto *to, const char *buf,
		       size_t n)
{
	const char *nl;
	size_t take;

	while (n) {
		nl = memchr(buf, '\n', n);
		take = nl ? (size_t)(nl - buf) : n;
		if (take > sizeof(p->line[s]) - p->line_len[s])
			take = sizeof(p->line[s]) - p->line_len[s];
		memcpy(p->line[s] + p->line_len[s], buf, take);
		p->line_len[s] += take;
		buf += take;
		n -= take;
		if (n && *buf == '\n') {
			log_line(to, s, p->line[s], p->line_len[s]);
			p->line_len[s] = 0;
			buf++;
			n--;
		} else if (p->line_len[s] == sizeof(p->line[s])) {
			flush_full(p, s, to);
		}
	}
}

/* Reads what the guest wrote to stdout or stderr; 0 at end of file. */
static int pump_output(struct vm_proc *p, int fd, const struct vm_logto *to)
{
	int s = fd == p->err;
	char buf[4096];
	ssize_t n = read(fd, buf, sizeof(buf));

	if (n <= 0)
		return n < 0 && (errno == EINTR || errno == EAGAIN) ? 1 : 0;
	add_output(p, s, to, buf, (size_t)n);
	if (s)
		keep_tail(p, buf, (size_t)n);
	return 1;
}

/* At end of file the VMM is on its way out: stop polling (and spinning on) the pipe. */
static void close_output(struct vm_proc *p, int fd)
{
	close(fd);
	if (fd == p->out)
		p->out = -1;
	else
		p->err = -1;
}

int vm_proc_pump(struct vm_proc *p, int ms, const struct vm_logto *to)
{
	struct pollfd pf[2] = { { p->out, POLLIN, 0 }, { p->err, POLLIN, 0 } };
	int i, n = poll(pf, 2, ms);

	for (i = 0; n > 0 && i < 2; i++)
		if (pf[i].revents && pf[i].fd >= 0 && !pump_output(p, pf[i].fd, to))
			close_output(p, pf[i].fd);
	return p->out < 0 && p->err < 0 ? -1 : n;
}

int vm_proc_exited(const struct vm_proc *p)
{
	siginfo_t si = { 0 };

	/* WNOWAIT: vm_proc_kill still reaps it. */
	return waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid;
}

int vm_proc_hung_up(const struct vm_proc *p)
{
	struct pollfd pf = { p->chan, POLLIN, 0 };

	/* Between requests a VM sends nothing (the VMM refuses the guest's frames then):
	 * anything to read is the end of the channel, or an error. */
	return poll(&pf, 1, 0) != 0;
}

struct xfer {
	char *out;		/* request frame */
	size_t out_len, out_off;
	char *in;		/* incoming bytes */
	size_t in_len, in_cap;
	struct vm_logto to;	/* where the guest's output goes */
};

/* Pulls complete frames out of x->in; returns 1 once a response was taken. */
static int take_frames(struct xfer *x, struct inv *inv, const struct vm_hooks *h)
{
	struct frame_hdr hdr;
	int done = 0;

	while (!done && x->in_len >= FRAME_HDR_SIZE) {
		frame_hdr_unpack((uint8_t *)x->in, &hdr);
		if (x->in_len < FRAME_HDR_SIZE + (size_t)hdr.len)
			break;
		if (hdr.type == FRAME_RESPONSE) {
			take_response(inv, x->in + FRAME_HDR_SIZE, hdr.len);
			done = 1;
		} else if (hdr.type == FRAME_VMM_STATS && h->on_stats) {
			h->on_stats(h->arg, x->in + FRAME_HDR_SIZE, hdr.len);
		}
		x->in_len -= FRAME_HDR_SIZE + hdr.len;
		memmove(x->in, x->in + FRAME_HDR_SIZE + hdr.len, x->in_len);
	}
	return done;
}

static int channel_io(struct vm_proc *p, struct xfer *x, short revents)
{
	ssize_t n;

	if ((revents & POLLOUT) && x->out_off < x->out_len) {
		n = write(p->chan, x->out + x->out_off, x->out_len - x->out_off);
		if (n > 0)
			x->out_off += (size_t)n;
	}
	if (!(revents & (POLLIN | POLLHUP | POLLERR)))
		return 1;
	if (x->in_cap - x->in_len < 65536) {
		char *b = realloc(x->in, x->in_cap * 2 + 65536);

		if (!b)
			return -ENOMEM;
		x->in = b;
		x->in_cap = x->in_cap * 2 + 65536;
	}
	n = read(p->chan, x->in + x->in_len, x->in_cap - x->in_len);
	if (n < 0 && errno == EAGAIN)
		return 1;
	if (n <= 0)
		return 0;
	x->in_len += (size_t)n;
	return x->in_len > FRAME_MAX_PAYLOAD + FRAME_HDR_SIZE ? -E2BIG : 1;
}

/* Waits for the VM to exit, draining its output; stops it first when asked. */
static void reap(struct vm_proc *p, const struct vm_logto *to, int kill_it, int *status)
{
	struct pollfd pf[2] = { { p->out, POLLIN, 0 }, { p->err, POLLIN, 0 } };
	int open = (p->out >= 0) + (p->err >= 0), i;

	if (kill_it)
		kill(p->pid, SIGTERM);
	while (open && poll(pf, 2, 2000) > 0) {
		for (i = 0; i < 2; i++)
			if (pf[i].fd >= 0 && pf[i].revents &&
			    !pump_output(p, pf[i].fd, to)) {
				close_output(p, pf[i].fd);
				pf[i].fd = -1;
				open--;
			}
	}
	vm_proc_stop(p->pid, status);
	p->pid = 0;
	vm_proc_kill(p);
}

/* How long one poll may sleep: until the deadline, or 100 ms to notice a cancel. */
static int poll_ms(uint64_t deadline, uint64_t now, const struct vm_hooks *h)
{
	uint64_t ms = (deadline - now) / 1000000 + 1;

	return (int)(h->cancel && ms > 100 ? 100 : ms);
}

static int exchange_loop(struct vm_proc *p, struct xfer *x, struct inv *inv,
			 uint64_t deadline, const struct vm_hooks *h)
{
	struct pollfd pf[3];
	uint64_t now;
	int r, i;

	for (;;) {
		now = vm_now_ns();
		if (now >= deadline)
			return -ETIMEDOUT;
		if (h->cancel && atomic_load(h->cancel))
			return -ECANCELED;
		pf[0] = (struct pollfd){ p->chan, POLLIN, 0 };
		if (x->out_off < x->out_len)
			pf[0].events |= POLLOUT;
		pf[1] = (struct pollfd){ p->out, POLLIN, 0 };
		pf[2] = (struct pollfd){ p->err, POLLIN, 0 };
		r = poll(pf, 3, poll_ms(deadline, now, h));
		if (r < 0 && errno != EINTR)
			return -errno;
		for (i = 1; i < 3; i++)
			if (pf[i].revents && pf[i].fd >= 0 &&
			    !pump_output(p, pf[i].fd, &x->to))
				close_output(p, pf[i].fd);
		if (!pf[0].revents)
			continue;
		r = channel_io(p, x, pf[0].revents);
		if (r <= 0)
			return r ? r : -EPIPE;
		if (take_frames(x, inv, h))
			return 0;
	}
}

enum vm_outcome vm_proc_invoke(struct vm_proc *p, struct inv *inv, uint32_t budget_ms,
			       const struct vm_hooks *hooks, int *status)
{
	struct xfer x = { .to = { inv->fn->name, inv->request_id } };
	int r;

	*status = 0;
	p->tail_len = 0;
	p->tail[0] = '\0';
	x.out = request_frame(inv, p->wall_ms, &x.out_len);
	if (!x.out)
		return VM_FAILED;
	r = exchange_loop(p, &x, inv, vm_now_ns() + (uint64_t)budget_ms * 1000000ULL, hooks);
	free(x.out);
	free(x.in);
	if (r == 0) {
		p->served++;
		vm_proc_flush_output(p, &x.to);
		return VM_OK;
	}
	reap(p, &x.to, r == -ETIMEDOUT || r == -ECANCELED, status);
	vm_proc_flush_output(p, &x.to);
	if (r == -ECANCELED)
		return VM_CANCELLED;
	if (r == -ETIMEDOUT || (WIFEXITED(*status) && WEXITSTATUS(*status) == 124))
		return VM_TIMEOUT;
	return VM_CRASHED;
}

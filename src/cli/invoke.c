/* `stoke invoke NAME [PATH]`: one HTTP request to a function, curl-style. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "common/base64.h"
#include "output.h"

#define CLI_INVOKE_MAX_HEADERS 64

struct cli_invoke {
	const char *name;
	const char *path;
	const char *method;
	const char *data;	/* as given: "@file", "@-" or the body itself */
	const char *headers[CLI_INVOKE_MAX_HEADERS + 1];
	int nheaders;
	int include;		/* -i: status line and headers before the body */
};

/* Reads the body named by --data into sb: @- is stdin, @FILE a file, anything else is
 * the body itself. */
static int cli_invoke_data(const char *data, struct strbuf *sb)
{
	char buf[65536];
	ssize_t n;
	int fd;

	if (data[0] != '@') {
		sb_adds(sb, data);
		return sb_failed(sb) ? -ENOMEM : 0;
	}
	fd = strcmp(data, "@-") ? open(data + 1, O_RDONLY | O_CLOEXEC) : STDIN_FILENO;
	if (fd < 0)
		return -errno;
	while ((n = read(fd, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR))
		if (n > 0)
			sb_add(sb, buf, n);
	if (n < 0)
		n = -errno;
	if (fd != STDIN_FILENO)
		close(fd);
	sb_add(sb, "", 0);
	return n < 0 ? (int)n : sb_failed(sb) ? -ENOMEM : 0;
}

/* Appends PATH to the target, encoding only what cannot appear in a request line; a
 * fragment stays on the client, as in a browser. */
static void cli_invoke_path(struct strbuf *sb, const char *path)
{
	static const char hex[] = "0123456789ABCDEF";

	if (path[0] != '/')
		sb_adds(sb, "/");
	for (; *path && *path != '#'; path++) {
		unsigned char ch = *path;
		char esc[3] = { '%', hex[ch >> 4], hex[ch & 15] };

		if (ch <= 0x20 || ch >= 0x7f)
			sb_add(sb, esc, 3);
		else
			sb_add(sb, path, 1);
	}
}

static int cli_invoke_header_ok(const char *h)
{
	const char *colon = strchr(h, ':');

	return colon && colon != h && !strpbrk(h, "\r\n") && !memchr(h, ' ', colon - h);
}

static int cli_invoke_method_ok(const char *m)
{
	return *m && strspn(m, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_") ==
		     strlen(m);
}

/* Handles one of invoke's own options; returns 0 or a usage exit code. */
static int cli_invoke_opt(struct cli_client *c, struct cli_invoke *iv, int opt)
{
	switch (opt) {
	case 'X':
		if (!cli_invoke_method_ok(optarg))
			return cli_usage(c->verb, "bad method '%s'", optarg);
		iv->method = optarg;
		return 0;
	case 'd':
		iv->data = optarg;
		return 0;
	case 'i':
		iv->include = 1;
		return 0;
	case 'H':
		break;
	default:
		return cli_usage(c->verb, "unexpected option");
	}
	if (!cli_invoke_header_ok(optarg))
		return cli_usage(c->verb, "-H wants 'Name: value', got '%s'", optarg);
	if (iv->nheaders == CLI_INVOKE_MAX_HEADERS)
		return cli_usage(c->verb, "at most %d headers", CLI_INVOKE_MAX_HEADERS);
	iv->headers[iv->nheaders++] = optarg;
	return 0;
}

static const struct option cli_invoke_opts[] = {
	CLI_CLIENT_OPTIONS,
	{ "request", required_argument, NULL, 'X' },
	{ "data", required_argument, NULL, 'd' },
	{ "header", required_argument, NULL, 'H' },
	{ "include", no_argument, NULL, 'i' },
	{ 0 },
};

static int cli_invoke_args(struct cli_client *c, int argc, char **argv, struct cli_invoke *iv,
			   int *code)
{
	int opt;

	while ((opt = cli_client_getopt(c, argc, argv, code)) >= 0) {
		*code = cli_invoke_opt(c, iv, opt);
		if (*code)
			return -1;
	}
	if (opt == -2)
		return -1;
	if (argc - optind < 1 || argc - optind > 2) {
		*code = cli_usage(c->verb, "wants a function name and optionally a path");
		return -1;
	}
	iv->name = argv[optind];
	iv->path = argc - optind == 2 ? argv[optind + 1] : "/";
	if (!iv->method)
		iv->method = iv->data ? "POST" : "GET";
	return 0;
}

/* Whether s[0..len) can travel as a JSON string: UTF-8 (structurally; overlong forms are
 * not hunted down) without NUL bytes, which cJSON strings cannot hold. */
static int cli_invoke_text(const unsigned char *s, size_t len)
{
	size_t i = 0, n, k;

	while (i < len) {
		unsigned char ch = s[i];

		if (ch == 0)
			return 0;
		if (ch < 0x80) {
			i++;
			continue;
		}
		n = (ch >> 5) == 6 ? 1 : (ch >> 4) == 14 ? 2 : (ch >> 3) == 30 ? 3 : 0;
		if (!n || i + n >= len)
			return 0;
		for (k = 1; k <= n; k++)
			if ((s[i + k] & 0xc0) != 0x80)
				return 0;
		i += n + 1;
	}
	return 1;
}

/* --json: {"status":200,"headers":{...},"body":"..."}, or "body_base64" for binary. */
static void cli_invoke_json(const struct cli_http_resp *resp)
{
	char *b64 = NULL;
	cJSON *doc = cJSON_CreateObject(), *headers, *old;
	size_t i;

	cJSON_AddNumberToObject(doc, "status", resp->status);
	headers = cJSON_AddObjectToObject(doc, "headers");
	for (i = 0; i < resp->nfields; i++) {
		const struct cli_http_field *f = &resp->fields[i];
		struct strbuf joined = STRBUF_INIT;

		/* Repeated fields combine into one list value (RFC 9110 section 5.3). */
		old = cJSON_GetObjectItemCaseSensitive(headers, f->name);
		if (cJSON_IsString(old)) {
			sb_printf(&joined, "%s, %s", old->valuestring, f->value);
			cJSON_ReplaceItemInObjectCaseSensitive(headers, f->name,
							       cJSON_CreateString(joined.buf));
		} else {
			cJSON_AddStringToObject(headers, f->name, f->value);
		}
		sb_free(&joined);
	}
	if (cli_invoke_text((const unsigned char *)resp->body.buf, resp->body.len)) {
		cJSON_AddStringToObject(doc, "body", resp->body.buf);
	} else {
		b64 = malloc(b64_encoded_len(resp->body.len));
		if (b64)
			b64_encode(resp->body.buf, resp->body.len, b64);
		cJSON_AddStringToObject(doc, "body_base64", b64 ? b64 : "");
	}
	cli_out_json(doc);
	cJSON_Delete(doc);
	free(b64);
}

static void cli_invoke_print(const struct cli_client *c, const struct cli_invoke *iv,
			     const struct cli_http_resp *resp)
{
	if (c->json) {
		cli_invoke_json(resp);
		return;
	}
	if (iv->include)
		fwrite(resp->head.buf, 1, resp->head.len, stdout);
	fwrite(resp->body.buf, 1, resp->body.len, stdout);
	/* On a terminal the prompt would otherwise follow the body on its last line; in a
	 * pipe or file the body stays byte for byte what the function sent. */
	if (resp->body.len && resp->body.buf[resp->body.len - 1] != '\n' &&
	    isatty(STDOUT_FILENO))
		putchar('\n');
	fflush(stdout);
}

static int cli_invoke_send(struct cli_client *c, struct cli_invoke *iv)
{
	struct strbuf target = STRBUF_INIT, body = STRBUF_INIT;
	struct cli_http_req req = { .method = iv->method, .headers = iv->headers };
	struct cli_http_resp resp = { 0 };
	int ret, code;

	if (iv->data && (ret = cli_invoke_data(iv->data, &body))) {
		fprintf(stderr, "stoke: --data %s: %s\n", iv->data, strerror(-ret));
		return CLI_EXIT_USAGE;
	}
	sb_adds(&target, "/fn/");
	cli_client_escape(&target, iv->name);
	cli_invoke_path(&target, iv->path);
	req.target = target.buf;
	if (iv->data) {
		req.body = body.buf;
		req.body_len = body.len;
	}
	code = sb_failed(&target) ? CLI_EXIT_USAGE : cli_client_send(c, &req, &resp);
	if (!code) {
		cli_invoke_print(c, iv, &resp);
		/* Like curl -f: redirects are answers, 4xx/5xx are failures. */
		code = resp.status < 400 ? CLI_EXIT_OK : CLI_EXIT_REMOTE;
	}
	cli_http_resp_free(&resp);
	sb_free(&target);
	sb_free(&body);
	return code;
}

static int cli_invoke_run(int argc, char **argv)
{
	struct cli_invoke iv = { 0 };
	struct cli_client c;
	int code = 0;

	cli_client_init(&c, &cli_verb_invoke);
	c.anonymous = 1;
	if (cli_invoke_args(&c, argc, argv, &iv, &code))
		return code;
	code = cli_client_open(&c);
	if (!code)
		code = cli_invoke_send(&c, &iv);
	cli_client_close(&c);
	return code;
}

const struct cli_verb cli_verb_invoke = {
	.name = "invoke",
	.args = "NAME [PATH] [OPTIONS]",
	.summary = "Call a function over HTTP and print its response body.",
	.options =
		"  -X, --request M     HTTP method (default GET, or POST with --data)\n"
		"  -d, --data D        request body: a string, @FILE, or @- for stdin\n"
		"  -H, --header H      extra request header 'Name: value' (repeatable)\n"
		"  -i, --include       print the status line and headers before the body\n",
	.notes =
		"With --json: {status, headers, body or body_base64}. The API token is never\n"
		"sent to functions. On a terminal, a body that does not end a line gets a\n"
		"newline. Exit status 1 when the function answers 4xx or 5xx.\n",
	.client = 1,
	.longopts = cli_invoke_opts,
	.shortopts = ":hX:d:H:i",
	.run = cli_invoke_run,
};

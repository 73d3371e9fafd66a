#include "client.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

const struct option cli_client_opts[] = { CLI_CLIENT_OPTIONS, { 0 } };

void cli_client_init(struct cli_client *c, const struct cli_verb *verb)
{
	memset(c, 0, sizeof(*c));
	c->verb = verb;
	c->timeout_ms = 120000;
}

static int cli_client_timeout(struct cli_client *c, const char *arg)
{
	char *end;
	double s;

	errno = 0;
	s = strtod(arg, &end);
	if (errno || end == arg || *end || s <= 0 || s > 86400)
		return -EINVAL;
	c->timeout_ms = (int)(s * 1000);
	if (!c->timeout_ms)
		c->timeout_ms = 1;
	return 0;
}

int cli_client_option(struct cli_client *c, int opt, const char *arg, int *exit_code)
{
	switch (opt) {
	case CLI_OPT_URL:
		c->url_flag = arg;
		return 1;
	case CLI_OPT_TOKEN:
		c->token_flag = arg;
		return 1;
	case CLI_OPT_DATA_DIR:
		c->data_dir_flag = arg;
		return 1;
	case CLI_OPT_JSON:
		c->json = 1;
		return 1;
	case CLI_OPT_TIMEOUT:
		if (!cli_client_timeout(c, arg))
			return 1;
		*exit_code = cli_usage(c->verb, "--timeout wants seconds, got '%s'", arg);
		return -1;
	}
	return 0;
}

int cli_client_getopt(struct cli_client *c, int argc, char **argv, int *exit_code)
{
	int opt, ret;

	for (;;) {
		opt = getopt_long(argc, argv, c->verb->shortopts, c->verb->longopts, NULL);
		if (opt == '?' || opt == ':') {
			*exit_code = cli_bad_option(c->verb, opt, argv);
			return -2;
		}
		ret = opt == -1 ? 0 : cli_client_option(c, opt, optarg, exit_code);
		if (ret < 0)
			return -2;
		if (!ret)
			return opt;
	}
}

/* The length of s without its trailing newlines. */
static size_t cli_client_trimmed_len(const char *s)
{
	size_t n = strlen(s);

	while (n && (s[n - 1] == '\n' || s[n - 1] == '\r'))
		n--;
	return n;
}

/* Whether msg already says "field NAME" ("unknown field limts ..."). */
static int cli_client_names_field(const char *msg, const char *field)
{
	char said[160];

	snprintf(said, sizeof(said), "field %s", field);
	return msg && strstr(msg, said);
}

/* The human line on stderr: the message, the field at fault, then a hint with a valid
 * value (for a refused derived name, the flag that sets another). */
static void cli_client_say(const struct cli_client *c, const cJSON *doc)
{
	const char *msg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc,
									       "message"));
	const char *field = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc,
										 "field"));
	const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc,
									     "suggestion"));

	if (!msg)
		msg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, "error"));
	if (!msg)
		msg = "error";
	/* A traceback ends in a newline: the field goes on its last line, not alone. */
	fprintf(stderr, "stoke: %.*s", (int)cli_client_trimmed_len(msg), msg);
	if (field && !cli_client_names_field(msg, field))
		fprintf(stderr, " (field: %s)", field);
	fputc('\n', stderr);
	if (s && c->name_in_file && field && !strcmp(field, "name"))
		fprintf(stderr, "stoke: hint: set \"name\" to \"%s\" in stoke.json\n", s);
	else if (s && c->name_flag && field && !strcmp(field, "name"))
		fprintf(stderr, "stoke: hint: use %s %s\n", c->name_flag, s);
	else if (s && field && !strcmp(field, "entry"))
		fprintf(stderr, "stoke: hint: set \"entry\" to \"%s\" in stoke.json\n", s);
	else if (s)
		fprintf(stderr, "stoke: hint: did you mean %s?\n", s);
}

void cli_client_error(const struct cli_client *c, const cJSON *doc)
{
	char *text;

	cli_client_say(c, doc);
	if (!c->json)
		return;
	/* One line, so that it also ends a stream of JSON lines (logs -f --json). */
	text = cJSON_PrintUnformatted(doc);
	if (text)
		printf("%s\n", text);
	free(text);
}

void cli_client_fail(const struct cli_client *c, const char *kind, const char *fmt, ...)
{
	char msg[1024];
	cJSON *doc;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	doc = cJSON_CreateObject();
	if (!doc || !cJSON_AddStringToObject(doc, "error", kind) ||
	    !cJSON_AddStringToObject(doc, "message", msg))
		fprintf(stderr, "stoke: %s\n", msg);	/* out of memory: the line at least */
	else
		cli_client_error(c, doc);
	cJSON_Delete(doc);
}

int cli_client_open(struct cli_client *c)
{
	struct cli_err err = { 0 };

	c->url_text = cli_config_url(c->url_flag);
	if (cli_url_parse(c->url_text, &c->url, &err)) {
		cli_client_fail(c, "usage", "bad daemon URL '%s': %s", c->url_text, err.msg);
		return CLI_EXIT_USAGE;
	}
	if (c->anonymous)
		return CLI_EXIT_OK;
	if (cli_config_token(c->token_flag, c->data_dir_flag, &c->token, &c->token_source,
			     &err)) {
		cli_client_fail(c, "usage", "%s", err.msg);
		return CLI_EXIT_USAGE;
	}
	/* It goes into a header line: a stray newline would forge headers. */
	if (c->token && strpbrk(c->token, "\r\n")) {
		cli_client_fail(c, "usage", "the token contains a line break");
		return CLI_EXIT_USAGE;
	}
	return CLI_EXIT_OK;
}

int cli_client_send(struct cli_client *c, struct cli_http_req *req, struct cli_http_resp *resp)
{
	struct cli_err err = { 0 };
	int ret;

	req->io_timeout_ms = c->timeout_ms;
	ret = cli_http_do(&c->url, req, resp, &err);
	if (!ret)
		return CLI_EXIT_OK;
	/* Only a verb that catches SIGINT sees this, and it knows why. */
	if (ret == -EINTR)
		return CLI_EXIT_UNREACHABLE;
	if (!resp->connected && ret == -ECONNREFUSED)
		cli_client_fail(c, "unreachable", "cannot reach the daemon at %s (is 'stoke "
				"serve' running?)", c->url_text);
	else if (!resp->connected)
		cli_client_fail(c, "unreachable", "cannot reach the daemon at %s: %s",
				c->url_text, err.msg);
	else if (ret == -ETIMEDOUT)
		cli_client_fail(c, "timeout", "the daemon at %s did not answer within %g s",
				c->url_text, c->timeout_ms / 1000.0);
	else
		cli_client_fail(c, "bad_answer", "%s", err.msg);
	return CLI_EXIT_UNREACHABLE;
}

/* The daemon's error as an object {"error","message","field"...} plus "status": the one
 * it sent, else one made of the status line and the start of whatever it sent. */
static cJSON *cli_client_error_doc(const struct cli_http_resp *resp)
{
	cJSON *doc = cJSON_ParseWithLength(resp->body.buf, resp->body.len);
	int len = resp->body.len > 200 ? 200 : (int)resp->body.len;
	char msg[300];

	if (cJSON_IsObject(doc) && (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(doc,
										"message")) ||
				    cJSON_IsString(cJSON_GetObjectItemCaseSensitive(doc,
										"error")))) {
		cJSON_DeleteItemFromObjectCaseSensitive(doc, "status");
		cJSON_AddNumberToObject(doc, "status", resp->status);
		return doc;
	}
	cJSON_Delete(doc);
	snprintf(msg, sizeof(msg), "the daemon answered %d%s%.*s", resp->status,
		 len ? ": " : "", len, resp->body.buf);
	doc = cJSON_CreateObject();
	if (doc) {
		cJSON_AddStringToObject(doc, "error", "http_error");
		cJSON_AddStringToObject(doc, "message", msg);
		cJSON_AddNumberToObject(doc, "status", resp->status);
	}
	return doc;
}

/* Says what the daemon refused (with --json also on stdout). Returns the exit code: a
 * manifest, name or entry file the daemon refuses is unusable local input, like a bad
 * PATH. */
static int cli_client_report(const struct cli_client *c, const struct cli_http_resp *resp)
{
	cJSON *doc = cli_client_error_doc(resp);
	const char *kind = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, "error"));
	int ret;

	if (!doc) {
		fprintf(stderr, "stoke: the daemon answered %d\n", resp->status);
		return CLI_EXIT_REMOTE;
	}
	cli_client_error(c, doc);
	ret = resp->status == 400 && kind && !strcmp(kind, "invalid_manifest") ?
		CLI_EXIT_USAGE : CLI_EXIT_REMOTE;
	cJSON_Delete(doc);
	return ret;
}

/* A 401 looks the same whatever went wrong on this side: say which token was sent. */
static void cli_client_explain_401(const struct cli_client *c)
{
	const struct cli_token_source *src = &c->token_source;

	if (src->found)
		fprintf(stderr, "stoke: the token sent came from %s; the daemon at %s does not "
			"accept it\n  (a daemon started with another data directory has another "
			"token: pass --data-dir\n  or set STOKE_DATA_DIR to the directory the "
			"daemon logged at start)\n", src->text, c->url_text);
	else
		fprintf(stderr, "stoke: no token was sent: no --token, STOKE_TOKEN is unset and "
			"%s\n  (pass --data-dir or set STOKE_DATA_DIR to the daemon's data "
			"directory)\n", src->text);
}

static int cli_client_parse(const struct cli_client *c, const struct cli_http_resp *resp,
			    cJSON **out)
{
	*out = cJSON_ParseWithLength(resp->body.buf, resp->body.len);
	if (*out)
		return CLI_EXIT_OK;
	cli_client_fail(c, "bad_answer", "the daemon answered %d with something that is not "
			"JSON", resp->status);
	return CLI_EXIT_REMOTE;
}

int cli_client_api(struct cli_client *c, const char *method, const char *target,
		   const struct strbuf *body, cJSON **out)
{
	struct cli_http_req req = { .method = method, .target = target };
	struct cli_http_resp resp;
	const char *headers[4] = { "Accept: application/json" };
	char *auth = NULL;
	int n = 1, ret;

	*out = NULL;
	if (c->token && asprintf(&auth, "Authorization: Bearer %s", c->token) < 0)
		auth = NULL;
	if (auth)
		headers[n++] = auth;
	if (body) {
		headers[n++] = "Content-Type: application/json";
		req.body = body->buf ? body->buf : "";
		req.body_len = body->len;
	}
	req.headers = headers;
	ret = cli_client_send(c, &req, &resp);
	if (!ret && (resp.status < 200 || resp.status > 299)) {
		ret = cli_client_report(c, &resp);
		if (resp.status == 401)
			cli_client_explain_401(c);
	} else if (!ret) {
		ret = cli_client_parse(c, &resp, out);
	}
	cli_http_resp_free(&resp);
	free(auth);
	return ret;
}

void cli_client_escape(struct strbuf *sb, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";

	for (; *s; s++) {
		unsigned char ch = *s;

		if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		    (ch >= '0' && ch <= '9') || strchr("-._~", ch)) {
			sb_add(sb, s, 1);
		} else {
			char esc[3] = { '%', hex[ch >> 4], hex[ch & 15] };

			sb_add(sb, esc, 3);
		}
	}
}

/* Parses the client options of a verb taking nargs arguments and opens the client.
 * Returns 0 to go on, else the exit code after saying why (usage, no daemon). */
static int cli_client_begin(struct cli_client *c, const struct cli_verb *verb, int argc,
			    char **argv, int nargs)
{
	int code = CLI_EXIT_USAGE;

	cli_client_init(c, verb);
	if (cli_client_getopt(c, argc, argv, &code) == -2)
		return code;
	if (argc - optind != nargs)
		return cli_usage(c->verb, nargs ? "wants exactly one function name" :
				 "takes no arguments");
	return cli_client_open(c);
}

int cli_client_fn_call(struct cli_client *c, const struct cli_verb *verb, int argc,
		       char **argv, const char *method, cJSON **out)
{
	struct strbuf target = STRBUF_INIT;
	int code;

	*out = NULL;
	code = cli_client_begin(c, verb, argc, argv, 1);
	if (code)
		return code;
	sb_adds(&target, "/_stoke/functions/");
	cli_client_escape(&target, argv[optind]);
	code = cli_client_api(c, method, target.buf, NULL, out);
	sb_free(&target);
	return code;
}

int cli_client_call(struct cli_client *c, const struct cli_verb *verb, int argc, char **argv,
		    const char *method, const char *target, cJSON **out)
{
	int code;

	*out = NULL;
	code = cli_client_begin(c, verb, argc, argv, 0);
	if (code)
		return code;
	return cli_client_api(c, method, target, NULL, out);
}

int cli_client_get_call(struct cli_client *c, const struct cli_verb *verb, int argc,
			char **argv, const char *target, cJSON **out)
{
	return cli_client_call(c, verb, argc, argv, "GET", target, out);
}

void cli_client_close(struct cli_client *c)
{
	free(c->token);
	c->token = NULL;
}

/*
 * hello-c: a native function that speaks the invocation channel directly
 * (docs/channel-abi.md). It reads request frames from descriptor 3 and answers each
 * with a response frame; one VM serves many requests.
 *
 * Build statically (the VM has no shared libraries for native functions):
 *   cc -O2 -static -o hello hello.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHANNEL_FD 3
#define FRAME_REQUEST 1
#define FRAME_RESPONSE 2

static int read_exact(void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = read(CHANNEL_FD, p, len);

		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int write_all(const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(CHANNEL_FD, p, len);

		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int send_response(const char *json)
{
	uint32_t len = (uint32_t)strlen(json);
	unsigned char hdr[8] = { len, len >> 8, len >> 16, len >> 24, FRAME_RESPONSE, 1, 0, 0 };

	return write_all(hdr, sizeof(hdr)) || write_all(json, len) ? -1 : 0;
}

int main(void)
{
	unsigned char hdr[8];
	unsigned long served = 0;
	char out[256];

	while (read_exact(hdr, sizeof(hdr)) == 0) {
		uint32_t len = hdr[0] | hdr[1] << 8 | hdr[2] << 16 | (uint32_t)hdr[3] << 24;
		char *req = malloc(len + 1);

		if (!req || read_exact(req, len))
			return 1;
		free(req);	/* a real function would parse the JSON request here */
		if (hdr[4] != FRAME_REQUEST)
			continue;
		snprintf(out, sizeof(out), "{\"statusCode\":200,\"headers\":{\"content-type\":"
			 "\"text/plain\"},\"body\":\"hello from C, request %lu\\n\"}", ++served);
		if (send_response(out))
			return 1;
	}
	return 0;
}

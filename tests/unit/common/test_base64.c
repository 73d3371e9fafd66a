#include "check.h"
#include "common/base64.h"

#include <errno.h>
#include <stdlib.h>

static void round_trip(const char *plain, const char *encoded)
{
	char enc[256], dec[256];
	long n;

	b64_encode(plain, strlen(plain), enc);
	CHECK_STR(enc, encoded);
	n = b64_decode(encoded, strlen(encoded), dec);
	CHECK(n == (long)strlen(plain));
	CHECK(n >= 0 && !memcmp(dec, plain, (size_t)n));
}

int main(void)
{
	char out[64];

	/* RFC 4648 section 10 test vectors */
	round_trip("", "");
	round_trip("f", "Zg==");
	round_trip("fo", "Zm8=");
	round_trip("foo", "Zm9v");
	round_trip("foob", "Zm9vYg==");
	round_trip("fooba", "Zm9vYmE=");
	round_trip("foobar", "Zm9vYmFy");
	/* Bytes outside ASCII, and the two characters past the letters and digits. */
	b64_encode("\x00\xff\xfe\x10\x80", 5, out);
	CHECK_STR(out, "AP/+EIA=");
	CHECK(b64_decode(out, 8, out + 16) == 5 && !memcmp(out + 16, "\x00\xff\xfe\x10\x80", 5));
	CHECK(b64_decode("Zm9v\nYmFy", 9, out) == 6);	/* whitespace ignored */
	CHECK(b64_decode("Zm9vYg", 6, out) == 4);	/* padding optional */
	CHECK(b64_decode("Zm9v!", 5, out) == -EINVAL);
	CHECK(b64_decode("Z", 1, out) == -EINVAL);	/* truncated group */
	CHECK(b64_decode("Zg==Zg==", 8, out) == -EINVAL);	/* data after padding */
	CHECK(b64_encoded_len(3) == 5 && b64_encoded_len(4) == 9);
	return check_done();
}

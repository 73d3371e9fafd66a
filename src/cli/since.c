#include "since.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Unix seconds fit comfortably below this (year 9999); larger is a typo. */
#define CLI_SINCE_MAX 253402300799LL

static const char cli_since_forms[] =
	"Unix seconds, a date like 2026-12-01[T08:30[:15]][Z] or an age like 30m, 1h, 7d";

/* Reads exactly n digits at *p into *v and moves *p past them. */
static int cli_since_digits(const char **p, int n, int *v)
{
	*v = 0;
	while (n--) {
		if (!isdigit((unsigned char)**p))
			return -EINVAL;
		*v = *v * 10 + (*(*p)++ - '0');
	}
	return 0;
}

static int cli_since_mdays(int y, int m)
{
	static const int mdays[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

	return mdays[m - 1] + (m == 2 && leap);
}

/* "THH:MM[:SS]" after a date; adds the seconds into the day to *secs. */
static int cli_since_clock(const char *p, long long *secs)
{
	int h, mi, s = 0;

	if (*p++ != 'T' || cli_since_digits(&p, 2, &h) || *p++ != ':' ||
	    cli_since_digits(&p, 2, &mi))
		return -EINVAL;
	if (*p == ':' && (p++, cli_since_digits(&p, 2, &s)))
		return -EINVAL;
	if (*p == 'Z')
		p++;
	if (*p || h > 23 || mi > 59 || s > 59)
		return -EINVAL;
	*secs += h * 3600 + mi * 60 + s;
	return 0;
}

static int cli_since_date(const char *text, long long *out, struct cli_err *err)
{
	struct tm tm = { 0 };
	const char *p = text;
	int y, m, d;

	if (cli_since_digits(&p, 4, &y) || *p++ != '-' || cli_since_digits(&p, 2, &m) ||
	    *p++ != '-' || cli_since_digits(&p, 2, &d))
		return cli_err_set(err, -EINVAL, "'%s' is not a time: use %s", text,
				   cli_since_forms);
	if (m < 1 || m > 12 || d < 1 || d > cli_since_mdays(y, m))
		return cli_err_set(err, -EINVAL, "'%s' is not a date in the calendar", text);
	tm.tm_year = y - 1900;
	tm.tm_mon = m - 1;
	tm.tm_mday = d;
	*out = (long long)timegm(&tm);
	if (*p && cli_since_clock(p, out))
		return cli_err_set(err, -EINVAL, "'%s': the time of day must read THH:MM or "
				   "THH:MM:SS (UTC)", text);
	if (*out < 0)
		return cli_err_set(err, -ERANGE, "'%s' is before 1970", text);
	return 0;
}

/* "<digits><unit>", counted back from now. */
static int cli_since_age(const char *text, const char *unit, long long n, time_t now,
			 long long *out, struct cli_err *err)
{
	static const char units[] = "smhdw";
	static const long long scale[] = { 1, 60, 3600, 86400, 7 * 86400 };
	const char *u = unit[0] && !unit[1] ? strchr(units, unit[0]) : NULL;

	if (!u)
		return cli_err_set(err, -EINVAL, "'%s' is not a time: use %s", text,
				   cli_since_forms);
	if (n > CLI_SINCE_MAX / scale[u - units])
		return cli_err_set(err, -ERANGE, "'%s' is too long ago", text);
	*out = (long long)now - n * scale[u - units];
	if (*out < 0)
		return cli_err_set(err, -ERANGE, "'%s' reaches back before 1970", text);
	return 0;
}

int cli_since_parse(const char *text, time_t now, long long *out, struct cli_err *err)
{
	const char *p = text;
	long long n = 0;

	if (strlen(text) >= 10 && text[4] == '-')
		return cli_since_date(text, out, err);
	while (isdigit((unsigned char)*p) && n <= CLI_SINCE_MAX)
		n = n * 10 + (*p++ - '0');
	if (p == text)
		return cli_err_set(err, -EINVAL, "'%s' is not a time: use %s", text,
				   cli_since_forms);
	if (n > CLI_SINCE_MAX)
		return cli_err_set(err, -ERANGE, "'%s' is too large", text);
	if (*p)
		return cli_since_age(text, p, n, now, out, err);
	*out = n;
	return 0;
}

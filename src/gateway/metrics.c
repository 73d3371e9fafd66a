/* Per-function counters and their Prometheus text exposition (/_stoke/metrics). */
#include "gateway.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

const double gw_hist_bounds_ms[GW_HIST_BUCKETS] = {
	0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 5000, 30000
};

void gw_stats_record(struct gw_stats *st, int status, uint64_t dur_ns, int cold)
{
	double ms = (double)dur_ns / 1e6;
	int b;

	atomic_fetch_add(&st->by_class[status / 100 % 6], 1);
	if (status >= 500)
		atomic_fetch_add(&st->errors, 1);
	if (cold)
		atomic_fetch_add(&st->cold_starts, 1);
	for (b = 0; b < GW_HIST_BUCKETS && ms > gw_hist_bounds_ms[b]; b++)
		;
	atomic_fetch_add(&st->hist[b], 1);
	atomic_fetch_add(&st->dur_us_sum, dur_ns / 1000);
}

static void gw_metric_hist(struct strbuf *out, const struct gw_stats *st, const char *labels)
{
	uint64_t cum = 0, n;
	int b;

	for (b = 0; b <= GW_HIST_BUCKETS; b++) {
		cum += atomic_load(&st->hist[b]);
		if (b < GW_HIST_BUCKETS)
			sb_printf(out, "stoke_request_duration_seconds_bucket{%s,le=\"%g\"} %llu\n",
				  labels, gw_hist_bounds_ms[b] / 1000, (unsigned long long)cum);
		else
			sb_printf(out, "stoke_request_duration_seconds_bucket{%s,le=\"+Inf\"} "
				  "%llu\n", labels, (unsigned long long)cum);
	}
	n = atomic_load(&st->dur_us_sum);
	sb_printf(out, "stoke_request_duration_seconds_sum{%s} %.6f\n", labels, (double)n / 1e6);
	sb_printf(out, "stoke_request_duration_seconds_count{%s} %llu\n", labels,
		  (unsigned long long)cum);
}

static void gw_metric_entry(struct gw *gw, struct strbuf *out, const struct gw_entry *e,
			    int part)
{
	const char *tier = e->fn ? gw->tiers[e->fn->tier].ops->name : "none";
	const struct gw_stats *st = &e->stats;
	char labels[160];
	int c;

	snprintf(labels, sizeof(labels), "function=\"%s\",tier=\"%s\"", e->name, tier);
	if (part == 0) {
		for (c = 1; c < 6; c++)
			sb_printf(out, "stoke_requests_total{%s,code=\"%dxx\"} %llu\n", labels, c,
				  (unsigned long long)atomic_load(&st->by_class[c]));
	} else if (part == 1) {
		sb_printf(out, "stoke_errors_total{%s} %llu\n", labels,
			  (unsigned long long)atomic_load(&st->errors));
	} else if (part == 2) {
		sb_printf(out, "stoke_cold_starts_total{%s} %llu\n", labels,
			  (unsigned long long)atomic_load(&st->cold_starts));
	} else {
		gw_metric_hist(out, st, labels);
	}
}

static const char *const gw_parts[][3] = {
	{ "stoke_requests_total", "counter", "Requests answered, by function, tier and status class." },
	{ "stoke_errors_total", "counter", "Requests answered with a 5xx status." },
	{ "stoke_cold_starts_total", "counter", "Requests that needed a new instance." },
	{ "stoke_request_duration_seconds", "histogram", "Time from routing to response." },
};

static long gw_rss_bytes(void)
{
	long pages = 0, rss = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (f) {
		if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
			rss = 0;
		fclose(f);
	}
	return rss * sysconf(_SC_PAGESIZE);
}

/*
 * A deleted function keeps its counters (a scraper sees them stay, not reset), but a
 * name that is not deployed and never answered a request (its first deploy failed, or
 * it was removed unused) has nothing to report.
 */
static int gw_metric_listed(const struct gw_entry *e)
{
	int c;

	if (e->fn || e->load_error)
		return 1;
	for (c = 0; c < 6; c++)
		if (atomic_load(&e->stats.by_class[c]))
			return 1;
	return 0;
}

void gw_metrics_render(struct gw *gw, struct strbuf *out)
{
	struct gw_entry *e;
	size_t i;
	int part;

	pthread_rwlock_rdlock(&gw->lock);
	for (part = 0; part < 4; part++) {
		sb_metric_head(out, gw_parts[part][0], gw_parts[part][1], gw_parts[part][2]);
		for (i = 0; i < gw->nbuckets; i++)
			for (e = gw->buckets[i]; e; e = e->next)
				if (gw_metric_listed(e))
					gw_metric_entry(gw, out, e, part);
	}
	sb_metric(out, "stoke_functions", "gauge", (long long)gw->nlive,
		  "Functions deployed and routed.");
	pthread_rwlock_unlock(&gw->lock);
	sb_metric(out, "stoke_inflight_requests", "gauge", (long long)gw_inflight_others(gw),
		  "Requests being served, not counting this scrape.");
	sb_metric(out, "stoke_process_resident_bytes", "gauge", gw_rss_bytes(),
		  "Resident memory of the daemon process.");
	for (i = 0; i < TIER_COUNT; i++)
		if (gw->tiers[i].ops->metrics)
			gw->tiers[i].ops->metrics(&gw->tiers[i], out);
}

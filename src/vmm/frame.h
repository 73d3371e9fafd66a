/*
 * Invocation channel frames (docs/channel-abi.md): an 8-byte header, then a JSON
 * payload. Shared by the VMM (which relays them) and the daemon's VM tier.
 */
#ifndef STOKE_VMM_FRAME_H
#define STOKE_VMM_FRAME_H

#include <stdint.h>
#include <string.h>

#define FRAME_HDR_SIZE		8
#define FRAME_VERSION		1
#define FRAME_MAX_PAYLOAD	(64u << 20)

enum frame_type {
	FRAME_REQUEST = 1,	/* daemon -> function: one invocation */
	FRAME_RESPONSE = 2,	/* function -> daemon: its answer */
	FRAME_VMM_STATS = 3,	/* stoke-vmm -> daemon, after each response; never guest */
	FRAME_LOAD = 4,		/* daemon -> runtime restored from a runtime snapshot */
	/* daemon -> stoke-vmm between requests (--state-dump): dump the VM and end; the
	 * guest never sees it. */
	FRAME_STATE_DUMP = 5,
	FRAME_VMM_LAUNCH = 6,	/* daemon -> stoke-vmm --shell, first: its command line */
};

struct frame_hdr {
	uint32_t len;		/* payload bytes after the header */
	uint8_t type;
	uint8_t version;
	uint16_t reserved;
};

static inline void frame_hdr_pack(uint8_t out[FRAME_HDR_SIZE], uint32_t len, uint8_t type)
{
	out[0] = (uint8_t)len;
	out[1] = (uint8_t)(len >> 8);
	out[2] = (uint8_t)(len >> 16);
	out[3] = (uint8_t)(len >> 24);
	out[4] = type;
	out[5] = FRAME_VERSION;
	out[6] = out[7] = 0;
}

static inline void frame_hdr_unpack(const uint8_t in[FRAME_HDR_SIZE], struct frame_hdr *h)
{
	h->len = (uint32_t)in[0] | (uint32_t)in[1] << 8 | (uint32_t)in[2] << 16 |
		 (uint32_t)in[3] << 24;
	h->type = in[4];
	h->version = in[5];
	h->reserved = (uint16_t)(in[6] | in[7] << 8);
}

#endif

/* felink.h: the front end's link to rank 0 (fel_ prefix): Unix sockets and the framing of
 * darkhorse.FeMsg (proto/darkhorse.proto).
 *
 * A frame is the message's length (uint32, little-endian) then the packed FeMsg. Both sides
 * write with fel_send (blocking, whole frames) or fel_frame (bytes for an evbuffer), and read
 * by feeding whatever bytes arrive to a fel_reader, which hands out every complete message. */
#ifndef DH_FELINK_H
#define DH_FELINK_H
#include <stddef.h>

#include "darkhorse.pb-c.h"

#define FEL_PROTOCOL_VERSION 1
#define FEL_MAX_MSG (16u << 20) /* bytes of one message: the metrics text of a big model fits */

/* The frame of m: malloc'd, *len bytes. */
unsigned char *fel_frame(const Darkhorse__FeMsg *m, size_t *len);
/* Write m's frame whole to the blocking fd: 0, or DH_EIO when the peer is gone (logged with
 * what). Not thread-safe on one fd: writers serialise. */
int fel_send(int fd, const Darkhorse__FeMsg *m);

typedef struct fel_reader fel_reader; /* bytes in, messages out; one owner */
fel_reader *fel_reader_new(void);
void fel_reader_free(fel_reader *r); /* NULL ok */
void fel_reader_feed(fel_reader *r, const void *buf, size_t n);
/* Called with each message; m is freed after the call. Non-zero stops the drain. */
typedef int (*fel_msg_fn)(void *ctx, const Darkhorse__FeMsg *m);
/* fn for every complete message fed so far, in order: 0; DH_EFORMAT when a frame is over
 * FEL_MAX_MSG or does not unpack (the link is then broken: close it); or fn's non-zero result. */
int fel_reader_drain(fel_reader *r, fel_msg_fn fn, void *ctx);
/* One blocking read(2) of fd into r: 0 when bytes came, DH_EIO at the end or on an error. */
int fel_read_fd(fel_reader *r, int fd);

/* A listening Unix stream socket at path (a stale file there is removed first): its fd, or
 * DH_EIO with a message naming the path. */
int fel_listen(const char *path);
/* A connection to the Unix socket at path: its fd, or DH_EIO with a message. */
int fel_connect(const char *path);
#endif

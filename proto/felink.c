/* felink.c: framing of the front end <-> rank 0 messages, and the Unix sockets they travel on.
 *
 * The reader keeps the bytes fed to it in one growing buffer and consumes whole frames from its
 * front; a length over FEL_MAX_MSG is refused before any allocation of that size, so a broken or
 * hostile peer cannot make the front end allocate gigabytes. A message is unpacked, handed to
 * the callback and freed in the same function (protobuf-c's __unpack/__free_unpacked pair). */
#include "felink.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/common.h"

struct fel_reader {
    unsigned char *buf; /* bytes fed and not yet consumed start at buf + off */
    size_t off, len, cap;
};

unsigned char *fel_frame(const Darkhorse__FeMsg *m, size_t *len) {
    size_t n = darkhorse__fe_msg__get_packed_size(m);
    DH_ASSERT(n <= FEL_MAX_MSG);
    unsigned char *b = xmalloc(n + 4);
    for (int i = 0; i < 4; i++) b[i] = (unsigned char)(n >> (8 * i));
    darkhorse__fe_msg__pack(m, b + 4);
    *len = n + 4;
    return b;
}

int fel_send(int fd, const Darkhorse__FeMsg *m) {
    size_t n;
    unsigned char *b = fel_frame(m, &n);
    size_t done = 0;
    while (done < n) {
        ssize_t w = send(fd, b + done, n - done, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            log_warn("front end link: cannot write a message (%s)", w < 0 ? strerror(errno) : "nothing written");
            free(b);
            return DH_EIO;
        }
        done += (size_t)w;
    }
    free(b);
    return 0;
}

fel_reader *fel_reader_new(void) { return xcalloc(1, sizeof(fel_reader)); }

void fel_reader_free(fel_reader *r) {
    if (!r) return;
    free(r->buf);
    free(r);
}

void fel_reader_feed(fel_reader *r, const void *buf, size_t n) {
    if (r->off && r->off == r->len) r->off = r->len = 0;
    if (r->len + n > r->cap) {
        if (r->off) { /* slide the unconsumed bytes down before growing */
            memmove(r->buf, r->buf + r->off, r->len - r->off);
            r->len -= r->off, r->off = 0;
        }
        if (r->len + n > r->cap) {
            r->cap = DH_MAX(r->len + n, 2 * r->cap + 4096);
            r->buf = xrealloc(r->buf, r->cap);
        }
    }
    memcpy(r->buf + r->len, buf, n);
    r->len += n;
}

int fel_reader_drain(fel_reader *r, fel_msg_fn fn, void *ctx) {
    while (r->len - r->off >= 4) {
        const unsigned char *p = r->buf + r->off;
        uint32_t n = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        if (n > FEL_MAX_MSG) {
            log_error("front end link: a message of %u bytes (at most %u): the peer is not speaking this protocol",
                      n, FEL_MAX_MSG);
            return DH_EFORMAT;
        }
        if (r->len - r->off - 4 < n) return 0; /* the rest of the frame has not arrived */
        Darkhorse__FeMsg *m = darkhorse__fe_msg__unpack(NULL, n, p + 4);
        r->off += 4 + (size_t)n;
        if (!m) {
            log_error("front end link: a frame of %u bytes is not a FeMsg", n);
            return DH_EFORMAT;
        }
        int rc = fn(ctx, m);
        darkhorse__fe_msg__free_unpacked(m, NULL);
        if (rc) return rc;
    }
    return 0;
}

int fel_read_fd(fel_reader *r, int fd) {
    unsigned char b[65536];
    for (;;) {
        ssize_t n = read(fd, b, sizeof b);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return DH_EIO;
        fel_reader_feed(r, b, (size_t)n);
        return 0;
    }
}

static int unix_addr(const char *path, struct sockaddr_un *a) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a->sun_path) {
        log_error("%s: a Unix socket path has at most %zu bytes", path, sizeof a->sun_path - 1);
        return DH_EINVAL;
    }
    memcpy(a->sun_path, path, strlen(path) + 1);
    return 0;
}

int fel_listen(const char *path) {
    struct sockaddr_un a;
    if (unix_addr(path, &a)) return DH_EIO;
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 4) != 0) {
        log_error("%s: cannot listen on this Unix socket (%s)", path, strerror(errno));
        if (fd >= 0) close(fd);
        return DH_EIO;
    }
    return fd;
}

int fel_connect(const char *path) {
    struct sockaddr_un a;
    if (unix_addr(path, &a)) return DH_EIO;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        log_error("%s: cannot connect to the front end's socket (%s)", path, strerror(errno));
        if (fd >= 0) close(fd);
        return DH_EIO;
    }
    return fd;
}

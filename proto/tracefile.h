/* tracefile.h: routing traces on disk (tf_ prefix), in darkhorse.proto's TraceHeader and
 * RouteRecord messages: the 8 bytes "DHTRACE1", then length-prefixed messages (uint32
 * little-endian length, then the packed message): one header, then records. A file may be
 * gzip-compressed as a whole; the reader takes both (docs/placement.md). */
#ifndef DH_TRACEFILE_H
#define DH_TRACEFILE_H
#include <stdint.h>

#include "sched/trace.h"

/* Read a whole trace file (plain or gzip). Records are merged per sequence: a record that
 * continues a sequence appends its tokens, one that holds only some layers (the MTP block's)
 * fills those layers of tokens already seen; tokens a layer was not recorded for have id -1
 * and weight 0. A truncated last record (a run that crashed) is ignored with a warning.
 * NULL with a message naming the file and the record on any other fault. */
trace *tf_read(const char *path);

/* Write the whole trace t to path, gzip-compressed, one record per sequence. Weights are
 * stored as integers of t->weight_unit when it is > 0 (exact for rounded source weights),
 * else as floats. 0, or DH_EIO with a message. */
int tf_write(const trace *t, const char *path);

/* The appending writer of live recording. Each record is flushed when added, so a crash
 * leaves at most one truncated record. */
typedef struct tf_writer tf_writer; /* owned by the thread that records */

/* One sequence's part of a record. */
typedef struct tf_part {
    int64_t seq_id;
    int domain;
    int start_pos;
    int n_tokens;
} tf_part;

/* Create path (truncating it) and write the header of hdr (its shape, dims, source and
 * domain names; its tokens are ignored). gzip-compressed when path ends in ".gz", else plain.
 * NULL with a message. */
tf_writer *tf_writer_open(const char *path, const trace *hdr);
/* Append one record: n_parts sequences, their tokens in order, holding the n_layers trace
 * layers layers[] (NULL: all L). ids and weights are [tokens, n_layers, K]. 0 or DH_EIO.
 * Allocates only when a record is larger than every one before it. */
int tf_writer_add(tf_writer *w, uint64_t step, const int *layers, int n_layers, const tf_part *parts,
                  int n_parts, const int *ids, const float *weights);
/* Flush and close: 0, or DH_EIO if anything failed to write. NULL ok. */
int tf_writer_close(tf_writer *w);
#endif

/* safetensors.h: read-only safetensors checkpoints, one file or shards (st_ prefix), and a
 * streaming writer (stw_ prefix). */
#ifndef DH_SAFETENSORS_H
#define DH_SAFETENSORS_H
#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

#define ST_MAX_DIMS 8

typedef enum st_dtype {
    ST_F32, ST_BF16, ST_F16, /* the ones we compute with */
    ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_U16, ST_U32, ST_U64, ST_BOOL,
    ST_F8_E4M3, ST_F8_E5M2,
    ST_N_DTYPES
} st_dtype;

typedef struct st_tensor {
    const char *name;      /* owned by the st_file */
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t numel;
    uint64_t offset;       /* absolute byte offset in its shard */
    uint64_t nbytes;
    int shard;
} st_tensor;

typedef struct st_file st_file;

/* Open a checkpoint: `path` is a directory (model.safetensors.index.json, else
 * model.safetensors), or one .safetensors file. Headers are read and validated in full
 * (lengths, offsets inside the file, sizes matching shape x dtype, no overlaps, known dtypes);
 * no tensor data is mapped yet. NULL with a message naming the file and tensor on error,
 * *err (if not NULL) set to DH_ENOTFOUND, DH_EIO or DH_EFORMAT. */
st_file *st_open(const char *path, int *err);
void st_close(st_file *st); /* unmaps everything; st_close(NULL) does nothing */

int st_count(const st_file *st);
const st_tensor *st_at(const st_file *st, int i);
/* The tensor called name, or NULL (no message: the caller knows what it wanted). */
const st_tensor *st_find(const st_file *st, const char *name);
/* Its data, mapped on first use (only its pages); NULL with a message if mapping fails.
 * Valid until st_close. */
const void *st_data(st_file *st, const st_tensor *t);
const char *st_dtype_name(st_dtype t);
size_t st_dtype_size(st_dtype t);
/* Unmap t's data (after it was converted into memory of one's own): pointers to it become
 * invalid; st_data maps it again if asked. */
void st_release(st_file *st, const st_tensor *t);
/* Bytes of tensor data currently mapped. */
uint64_t st_mapped_bytes(const st_file *st);
/* The string value of key in the first file's "__metadata__", or NULL. Valid until st_close. */
const char *st_metadata(const st_file *st, const char *key);

/* --- writer: the header first (all shapes known), then the data in order --- */
typedef struct stw_tensor {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
} stw_tensor;
typedef struct st_writer st_writer;
/* Create path and write its header for n tensors, in this order. NULL with a message. */
st_writer *stw_open(const char *path, const stw_tensor *tensors, int n);
/* The same with "__metadata__" entries keys[i] = values[i] (strings). */
st_writer *stw_open_meta(const char *path, const stw_tensor *tensors, int n, const char *const *keys,
                         const char *const *values, int n_meta);
/* Append bytes of tensor data (tensors in order, any chunking). 0 or DH_EIO. */
int stw_write(st_writer *w, const void *data, size_t nbytes);
/* Check that exactly the declared bytes were written, close. 0, DH_EIO or DH_EFORMAT. */
int stw_close(st_writer *w);
#endif

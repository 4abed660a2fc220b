/* An LD_PRELOAD allocation counter for scenario 6 of `cargo bench -p hmr-bench`.
 *
 * Every cdylib the host loads carries its own copy of Rust's std, whose default allocator
 * calls the C allocator; so does the host. Interposing the C allocator's entry points counts
 * the allocations of the host and of every plugin version in the process, which a Rust
 * `#[global_allocator]` in the host cannot (it sees only the host's own). Built by the bench
 * with the machine's C compiler: cc -shared -fPIC -O2 -o malloc_count.so malloc_count.c
 *
 * Forwards to glibc's `__libc_*` entry points (exported by glibc for this purpose), so no
 * `dlsym` bootstrap is needed. `free` is not interposed: glibc's own frees what these return.
 * Counted: malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign, valloc, pvalloc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void *__libc_memalign(size_t align, size_t size);
extern void *__libc_valloc(size_t size);
extern void *__libc_pvalloc(size_t size);

static uint64_t allocations;

static inline void counted(void) { __atomic_fetch_add(&allocations, 1, __ATOMIC_RELAXED); }

/* What the bench reads (found with dlsym; absent when the counter is not preloaded). */
uint64_t hmr_bench_allocations(void) { return __atomic_load_n(&allocations, __ATOMIC_RELAXED); }

void *malloc(size_t size) {
    counted();
    return __libc_malloc(size);
}

void *calloc(size_t n, size_t size) {
    counted();
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t size) {
    counted();
    return __libc_realloc(p, size);
}

void *memalign(size_t align, size_t size) {
    counted();
    return __libc_memalign(align, size);
}

void *aligned_alloc(size_t align, size_t size) {
    counted();
    return __libc_memalign(align, size);
}

void *valloc(size_t size) {
    counted();
    return __libc_valloc(size);
}

void *pvalloc(size_t size) {
    counted();
    return __libc_pvalloc(size);
}

int posix_memalign(void **out, size_t align, size_t size) {
    counted();
    if (align < sizeof(void *) || (align & (align - 1)) != 0) {
        return EINVAL;
    }
    void *p = __libc_memalign(align, size);
    if (p == NULL) {
        return ENOMEM;
    }
    *out = p;
    return 0;
}

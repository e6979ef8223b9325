/*
 * TCG plugin for qemu-user (aarch64 guests): counts the guest instructions a program executes by A64 encoding
 * class, the bytes it loads and stores, and, per translation block (keyed by guest address), how often it ran, so
 * that bench/arm_cost can attribute instructions to functions. Deterministic for a single-threaded guest.
 *
 *   gcc -O2 -fPIC -shared count_insns.c -o libcount_insns.so
 *   qemu-aarch64 -cpu cortex-a76 -plugin ./libcount_insns.so,out=counts.txt[,mode=atomic] PROGRAM ...
 *
 * mode=inline (default): the block counters are bumped by code qemu inlines into each translated block (nearly
 *   free; exact when one guest thread runs at a time). mode=atomic: a callback with an atomic add per block and
 *   per memory access (exact with concurrently running guest threads, slower).
 *
 * The output (written at exit, under OUT.partial then renamed) is text:
 *   qemu_arm_cost 1
 *   mode inline|atomic
 *   vcpus N                      guest threads qemu created (N > 1 with mode=inline: counts may race)
 *   total NAME COUNT             one line per class (below), then insns, bytes_loaded, bytes_stored
 *   tb VADDR NINSNS EXECS LOADED_BYTES STORED_BYTES C0 C1 ...   per translated block that ran, class counts of
 *                                                              one execution in the order of the total lines
 *
 * The API used is qemu's documented plugin C API, version 1 (qemu 4.2 to 7.2, include/qemu/qemu-plugin.h);
 * the few declarations it needs are written out below so the plugin builds without qemu's source tree.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- qemu plugin API, version 1 (the subset used here) ---- */
#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t {
    const char *target_name;
    struct {
        int min;
        int cur;
    } version;
    bool system_emulation;
    union {
        struct {
            int smp_vcpus;
            int max_vcpus;
        } system;
    };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef uint32_t qemu_plugin_meminfo_t;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_mem_rw { QEMU_PLUGIN_MEM_R = 1, QEMU_PLUGIN_MEM_W, QEMU_PLUGIN_MEM_RW };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_simple_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_mem_cb_t)(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr,
                                          void *userdata);
void qemu_plugin_register_vcpu_init_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_simple_cb_t cb);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_mem_cb_t cb,
                                      enum qemu_plugin_cb_flags flags, enum qemu_plugin_mem_rw rw, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
unsigned int qemu_plugin_mem_size_shift(qemu_plugin_meminfo_t info);
bool qemu_plugin_mem_is_store(qemu_plugin_meminfo_t info);
QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;
/* ---- end of the API declarations ---- */

/* Classes by the A64 top-level encoding (op0 = bits 28:25, Arm ARM C4.1), plus two subsets of simd_fp that show
 * which integer dot-product paths a kernel took. The order is the output order. */
enum {
    K_SIMD_FP,  /* x111: data processing, SIMD and floating point (includes dot and mmla below) */
    K_LS_SIMD,  /* x1x0 with V (bit 26) set: SIMD&FP loads and stores */
    K_LS_GP,    /* x1x0 with V clear: general-register loads, stores, atomics, prefetches */
    K_DP_IMM,   /* 100x: integer data processing, immediate */
    K_DP_REG,   /* x101: integer data processing, register */
    K_BRANCH,   /* 101x: branches, exception generation, system */
    K_SVE,      /* 0010: SVE */
    K_OTHER,    /* 0000/0001/0011: reserved, SME */
    K_DOT,      /* subset of simd_fp: SDOT/UDOT/USDOT/SUDOT, vector and by element */
    K_MMLA,     /* subset of simd_fp: SMMLA/UMMLA/USMMLA (i8mm) and BFMMLA */
    K_N
};
static const char *const kClassNames[K_N] = {"simd_fp", "ls_simd", "ls_gp",  "dp_imm", "dp_reg",
                                             "branch",  "sve",     "other",  "dot",    "mmla"};

static int classify(uint32_t w) {
    uint32_t op0 = (w >> 25) & 0xf;
    if ((op0 & 0x7) == 0x7) return K_SIMD_FP;
    if ((op0 & 0x5) == 0x4) return (w >> 26) & 1 ? K_LS_SIMD : K_LS_GP;
    if ((op0 & 0xe) == 0x8) return K_DP_IMM;
    if ((op0 & 0x7) == 0x5) return K_DP_REG;
    if ((op0 & 0xe) == 0xa) return K_BRANCH;
    if (op0 == 0x2) return K_SVE;
    return K_OTHER;
}

static int subset(uint32_t w) {
    if ((w & 0x9F20FC00u) == 0x0E009400u && ((w >> 22) & 3) == 2) return K_DOT; /* SDOT/UDOT (vector) */
    if ((w & 0xBFE0FC00u) == 0x0E809C00u) return K_DOT;                        /* USDOT (vector) */
    if ((w & 0x9FC0F400u) == 0x0F80E000u) return K_DOT;                        /* SDOT/UDOT (element) */
    if ((w & 0xBFC0F400u) == 0x0F00F000u || (w & 0xBFC0F400u) == 0x0F80F000u) return K_DOT; /* SUDOT/USDOT elem */
    if ((w & 0xDFE0F400u) == 0x4E80A400u) return K_MMLA; /* SMMLA/UMMLA (bit 29) and USMMLA (bit 11) */
    if ((w & 0xFFE0FC00u) == 0x6E40EC00u) return K_MMLA; /* BFMMLA */
    return -1;
}

typedef struct {
    uint64_t execs;
    uint64_t loaded, stored;
    uint64_t vaddr;
    uint32_t n_insns;
    uint32_t cls[K_N];
} Block;

/* Blocks are never moved (qemu holds pointers to their counters), so they live in fixed-size slabs. Translation
 * in qemu-user runs under its mmap lock, so the slab list needs no lock of its own. */
#define SLAB 8192
static Block **slabs;
static size_t n_slabs, n_blocks;
static bool atomic_mode;
static char *out_path;
static unsigned vcpus;

static Block *new_block(void) {
    if (n_blocks == n_slabs * SLAB) {
        slabs = realloc(slabs, (n_slabs + 1) * sizeof *slabs);
        slabs[n_slabs++] = calloc(SLAB, sizeof(Block));
        if (!slabs || !slabs[n_slabs - 1]) abort();
    }
    Block *b = &slabs[n_blocks / SLAB][n_blocks % SLAB];
    n_blocks++;
    return b;
}

static void on_exec_atomic(unsigned int vcpu, void *udata) {
    (void)vcpu;
    __atomic_fetch_add(&((Block *)udata)->execs, 1, __ATOMIC_RELAXED);
}

/* qemu 7.2 splits a 128-bit access into two 64-bit ones, so bytes, not accesses, are what is comparable. */
static void on_mem(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata) {
    (void)vcpu, (void)vaddr;
    Block *b = udata;
    uint64_t bytes = 1ull << qemu_plugin_mem_size_shift(info);
    uint64_t *counter = qemu_plugin_mem_is_store(info) ? &b->stored : &b->loaded;
    if (atomic_mode)
        __atomic_fetch_add(counter, bytes, __ATOMIC_RELAXED);
    else
        *counter += bytes;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    Block *b = new_block();
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    size_t n = qemu_plugin_tb_n_insns(tb);
    b->n_insns = (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint32_t w = 0;
        memcpy(&w, qemu_plugin_insn_data(insn), qemu_plugin_insn_size(insn) < 4 ? qemu_plugin_insn_size(insn) : 4);
        int k = classify(w);
        b->cls[k]++;
        if (k == K_SIMD_FP) {
            int s = subset(w);
            if (s >= 0) b->cls[s]++;
        }
        if (k == K_LS_SIMD || k == K_LS_GP || k == K_SVE || k == K_OTHER)
            qemu_plugin_register_vcpu_mem_cb(insn, on_mem, QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW, b);
    }
    if (atomic_mode)
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_exec_atomic, QEMU_PLUGIN_CB_NO_REGS, b);
    else
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->execs, 1);
}

static void on_vcpu_init(qemu_plugin_id_t id, unsigned int vcpu) {
    (void)id, (void)vcpu;
    __atomic_fetch_add(&vcpus, 1, __ATOMIC_RELAXED);
}

static void on_plugin_exit(qemu_plugin_id_t id, void *udata) {
    (void)id, (void)udata;
    uint64_t totals[K_N] = {0}, insns = 0, loaded = 0, stored = 0;
    for (size_t i = 0; i < n_blocks; i++) {
        const Block *b = &slabs[i / SLAB][i % SLAB];
        for (int k = 0; k < K_N; k++) totals[k] += b->execs * b->cls[k];
        insns += b->execs * b->n_insns;
        loaded += b->loaded;
        stored += b->stored;
    }
    size_t len = strlen(out_path);
    char *tmp = malloc(len + 9);
    memcpy(tmp, out_path, len);
    memcpy(tmp + len, ".partial", 9);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "count_insns: cannot write %s\n", tmp);
        return;
    }
    fprintf(f, "qemu_arm_cost 1\nmode %s\nvcpus %u\n", atomic_mode ? "atomic" : "inline", vcpus);
    for (int k = 0; k < K_N; k++) fprintf(f, "total %s %llu\n", kClassNames[k], (unsigned long long)totals[k]);
    fprintf(f, "total insns %llu\ntotal bytes_loaded %llu\ntotal bytes_stored %llu\n", (unsigned long long)insns,
            (unsigned long long)loaded, (unsigned long long)stored);
    for (size_t i = 0; i < n_blocks; i++) {
        const Block *b = &slabs[i / SLAB][i % SLAB];
        if (!b->execs && !b->loaded && !b->stored) continue;
        fprintf(f, "tb %llx %u %llu %llu %llu", (unsigned long long)b->vaddr, b->n_insns,
                (unsigned long long)b->execs, (unsigned long long)b->loaded, (unsigned long long)b->stored);
        for (int k = 0; k < K_N; k++) fprintf(f, " %u", b->cls[k]);
        fputc('\n', f);
    }
    if (fclose(f) != 0 || rename(tmp, out_path) != 0) fprintf(stderr, "count_insns: cannot write %s\n", out_path);
    free(tmp);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    if (info->system_emulation || strcmp(info->target_name, "aarch64") != 0) {
        fprintf(stderr, "count_insns: needs qemu-aarch64 (user mode), got %s\n", info->target_name);
        return -1;
    }
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0)
            out_path = strdup(argv[i] + 4);
        else if (strcmp(argv[i], "mode=atomic") == 0)
            atomic_mode = true;
        else if (strcmp(argv[i], "mode=inline") != 0) {
            fprintf(stderr, "count_insns: unknown argument '%s' (out=FILE, mode=inline|atomic)\n", argv[i]);
            return -1;
        }
    }
    if (!out_path) {
        fprintf(stderr, "count_insns: missing out=FILE\n");
        return -1;
    }
    qemu_plugin_register_vcpu_init_cb(id, on_vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
    return 0;
}

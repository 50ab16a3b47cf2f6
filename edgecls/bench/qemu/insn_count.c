/* edgecls instruction counter: a QEMU TCG plugin (plugin API v1, qemu-user 7.2).
 *
 * Counts the guest instructions a program executes, per translated block, so that the count can
 * be split by function (model.so's kernels, libtvm_runtime, libc) afterwards. Each translated
 * block gets a record {vaddr, instructions}; an inline add bumps the record's execution counter
 * every time the block runs. Inline adds are not atomic: the total is exact with one guest thread
 * (count a runner started with --threads 1).
 *
 * Arguments: out=PATH writes "vaddr n_insns executions" per record (hex, dec, dec) to PATH at exit,
 * after a first line "total N". Without it only the total goes to qemu's log (stderr).
 * per_thread=on also counts each guest thread on its own: in qemu-user every guest thread is its
 * own vcpu (the main thread is vcpu 0), and an exec callback adds the block's size to that vcpu's
 * counter, which only that thread writes, so each thread's count is exact however many threads
 * run (ONNX Runtime starts helper threads even with one intra-op thread). The out= file then has
 * "vcpu I N" lines after the total, before the records. A helper call per block costs more than
 * the inline add (measured on LiteRT MobileNetV2, 3 inferences: 12.0-13.6 s of host CPU against
 * 11.3-12.6 s), so it is off by default.
 *
 * The few API declarations below are the stable v1 ABI of QEMU's include/qemu/qemu-plugin.h;
 * Debian ships qemu-user with plugin support but not the header.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through */
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

EXPORT int qemu_plugin_version = 1;

struct block {
    uint64_t vaddr;
    uint64_t n_insns;
    uint64_t executions; /* bumped by generated code: its address must never move */
};

/* Records live in fixed-size chunks that are never reallocated (the inline add holds a pointer). */
#define CHUNK 8192
struct chunk {
    struct block blocks[CHUNK];
    size_t used;
    struct chunk *next;
};

static struct chunk *chunks;
static char *out_path;

/* Per-thread counters, indexed by vcpu; the last slot collects any vcpu index beyond it (never
 * seen in practice: qemu-user reuses the indices of threads that have exited). */
#define MAX_VCPUS 1024
static bool per_thread;
static uint64_t vcpu_insns[MAX_VCPUS + 1];

static void on_exec(unsigned int vcpu_index, void *userdata)
{
    unsigned int i = vcpu_index < MAX_VCPUS ? vcpu_index : MAX_VCPUS;
    vcpu_insns[i] += ((const struct block *)userdata)->n_insns;
}

static struct block *new_block(void)
{
    if (chunks == NULL || chunks->used == CHUNK) {
        struct chunk *c = calloc(1, sizeof(*c));
        if (c == NULL) {
            abort();
        }
        c->next = chunks;
        chunks = c;
    }
    return &chunks->blocks[chunks->used++];
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    struct block *b = new_block();
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->n_insns = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->executions, 1);
    if (per_thread) {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_exec, QEMU_PLUGIN_CB_NO_REGS, b);
    }
}

static void write_vcpus(FILE *f)
{
    for (unsigned int i = 0; i <= MAX_VCPUS; i++) {
        if (vcpu_insns[i] != 0) {
            fprintf(f, "vcpu %u %" PRIu64 "\n", i, vcpu_insns[i]);
        }
    }
}

static void on_plugin_exit(qemu_plugin_id_t id, void *userdata)
{
    uint64_t total = 0;
    for (struct chunk *c = chunks; c != NULL; c = c->next) {
        for (size_t i = 0; i < c->used; i++) {
            total += c->blocks[i].n_insns * c->blocks[i].executions;
        }
    }
    char line[96];
    snprintf(line, sizeof(line), "edgecls-insn-count: total %" PRIu64 "\n", total);
    qemu_plugin_outs(line);
    if (out_path == NULL) {
        return;
    }
    FILE *f = fopen(out_path, "w");
    if (f == NULL) {
        qemu_plugin_outs("edgecls-insn-count: cannot write the out= file\n");
        return;
    }
    fprintf(f, "total %" PRIu64 "\n", total);
    if (per_thread) {
        write_vcpus(f);
    }
    for (struct chunk *c = chunks; c != NULL; c = c->next) {
        for (size_t i = 0; i < c->used; i++) {
            const struct block *b = &c->blocks[i];
            if (b->executions != 0) {
                fprintf(f, "%" PRIx64 " %" PRIu64 " %" PRIu64 "\n", b->vaddr, b->n_insns, b->executions);
            }
        }
    }
    fclose(f);
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            out_path = strdup(argv[i] + 4);
        } else if (strcmp(argv[i], "per_thread=on") == 0 || strcmp(argv[i], "per_thread=off") == 0) {
            per_thread = strcmp(argv[i], "per_thread=on") == 0;
        } else {
            fprintf(stderr, "edgecls-insn-count: unknown argument '%s' (expected out=PATH, per_thread=on)\n",
                    argv[i]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
    return 0;
}

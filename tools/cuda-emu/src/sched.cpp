// cuda-emu: runs one kernel launch on the CPU. Blocks run one after another on the calling host
// thread; inside a block every CUDA thread is a fiber (its own stack, switched by emu_switch).
// A fiber runs until it finishes or reaches a synchronisation point (__syncthreads, a warp
// collective), so the order of execution between barriers is an ordinary sequential one and
// the result depends only on the kernel (PRRNET_EMU_ORDER=reverse runs fibers in the opposite
// order and =shuffle[:SEED] in a repeatable pseudo-random one, which expose reads of shared
// memory that lack a barrier).
//
// Checked here, and reported as a launch failure naming the kernel and block: a barrier that
// can never complete (a __syncthreads some threads skip, lanes disagreeing on a warp collective,
// a collective naming lanes that have exited), a block larger than 1024 threads.
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "emu.h"
#include "emu_sched.h"

extern "C" void emu_switch(void** save_sp, void* new_sp);
extern "C" void emu_fiber_start();

// ---- race mode (build.py --race) --------------------------------------------------------------
// The kernels are compiled with ThreadSanitizer, every CUDA thread is a TSan fiber, and the
// synchronisation CUDA defines is told to TSan as happens-before edges, so an access to the same
// shared (or global) memory by two threads of a block with no barrier or warp collective between
// them is reported whatever order the fibers happened to run in:
// - a fiber's first switch-in of a block inherits the scheduler's history (the block's shared
//   memory poisoning, earlier blocks and launches, the host's copies); later switches carry
//   nothing;
// - __syncthreads: every waiting thread releases into one object, then every one acquires it;
// - a warp collective: its lanes release, the lowest lane acquires, runs the collective (WMMA
//   loads and stores, ldmatrix's row reads: attributed to that lane), releases, and every lane
//   acquires;
// - cp.async: the source is read at issue and the destination written at the wait that lands it,
//   by the issuing thread;
// - a block's end: every thread releases and the scheduler acquires (blocks run in sequence).
#ifdef PRRNET_EMU_RACE
#include <sanitizer/tsan_interface.h>
extern "C" void __tsan_read_range(void* addr, unsigned long size);
extern "C" void __tsan_write_range(void* addr, unsigned long size);
#define RACE(...) __VA_ARGS__
#else
#define RACE(...)
#endif

namespace emu {

thread_local dim3 t_thread, t_block, t_bdim, t_gdim;

namespace {

constexpr size_t STACK_BYTES = 256 * 1024;
constexpr size_t PAGE = 4096;

enum State : uint8_t { READY, AT_BAR, AT_WARP, DONE, FAILED };

struct Copy {
    void* dst;
    unsigned n;
    unsigned char bytes[16];
};

struct Fiber {
    dim3 tid;
    State st;
    void* sp;
    char* stack;  // lowest usable address (a guard page lies below it)
    unsigned mask;
    CollectiveFn fn;
    void* data;
    std::vector<Copy> open;
    std::deque<std::vector<Copy>> committed;
    RACE(void* tsan = nullptr; bool fresh = false;)
};

// Everything about the block being run on this host thread.
struct Run {
    std::vector<Fiber> fibers;
    int n = 0;
    int cur = -1;
    void* sched_sp = nullptr;
    const std::function<void()>* body = nullptr;
    char* dyn = nullptr;  // dynamic shared memory of the current block
    size_t dyn_cap = 0;   // bytes mapped for it, ending at a guard page
    char* dyn_map = nullptr;
    size_t dyn_map_len = 0;
    std::string error;
    const char* kernel = nullptr;
};

thread_local Run g;
thread_local bool in_fiber = false;

#ifdef PRRNET_EMU_RACE
// The scheduler's own TSan context, and objects whose addresses serve as TSan sync objects.
thread_local void* sched_tsan = nullptr;
thread_local char barrier_sync, block_sync, warp_sync[32];

// Make `ctx` TSan's current thread without any happens-before edge.
void tsan_enter(void* ctx) { __tsan_switch_to_fiber(ctx, __tsan_switch_to_fiber_no_sync); }
#endif

struct Failure {
    std::string msg;
};

// PRRNET_EMU_ORDER: unset (thread order), `reverse`, or `shuffle` / `shuffle:SEED` (a fresh
// pseudo-random order in every round between synchronisation points, seeded by SEED, the
// block and the round, so a run is repeatable and a failing order can be replayed).
struct Order {
    enum Kind { FORWARD, REVERSE, SHUFFLE } kind = FORWARD;
    unsigned long long seed = 1;
};

Order run_order() {
    static const Order o = [] {
        Order r;
        const char* v = getenv("PRRNET_EMU_ORDER");
        const std::string s = v ? v : "";
        if (s == "reverse") {
            r.kind = Order::REVERSE;
        } else if (s.rfind("shuffle", 0) == 0) {
            r.kind = Order::SHUFFLE;
            if (s.size() > 8 && s[7] == ':') r.seed = strtoull(s.c_str() + 8, nullptr, 10);
        } else if (!s.empty()) {
            fprintf(stderr, "cuda-emu: PRRNET_EMU_ORDER=%s: expected reverse or shuffle[:SEED]\n",
                    s.c_str());
            abort();
        }
        return r;
    }();
    return o;
}

// splitmix64: the shuffle's random numbers.
unsigned long long mix(unsigned long long x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

unsigned long long block_index() {
    return (t_block.z * (unsigned long long)t_gdim.y + t_block.y) * t_gdim.x + t_block.x;
}

// The order in which the fibers of this block run in scheduling round `round`.
void round_order(std::vector<int>& perm, int n, unsigned long long round) {
    perm.resize(n);
    const Order o = run_order();
    for (int k = 0; k < n; ++k) perm[k] = o.kind == Order::REVERSE ? n - 1 - k : k;
    if (o.kind != Order::SHUFFLE) return;
    unsigned long long state = mix(o.seed ^ mix(block_index() ^ mix(round)));
    for (int k = n - 1; k > 0; --k) {
        state = mix(state);
        std::swap(perm[k], perm[state % (unsigned long long)(k + 1)]);
    }
}

char* map_guarded(size_t usable, char** base, size_t* len) {
    size_t total = usable + PAGE;
    void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) {
        perror("cuda-emu: mmap");
        abort();
    }
    *base = static_cast<char*>(p);
    *len = total;
    return static_cast<char*>(p);
}

void ensure_fibers(int n) {
    while ((int)g.fibers.size() < n) {
        Fiber f{};
        char* base;
        size_t len;
        map_guarded(STACK_BYTES, &base, &len);
        mprotect(base, PAGE, PROT_NONE);  // stack overflow faults instead of corrupting
        f.stack = base + PAGE;
        g.fibers.push_back(std::move(f));
    }
}

// The dynamic shared memory ends where a guard page begins, so overrunning it faults.
void ensure_dyn(size_t bytes) {
    size_t want = (bytes + PAGE - 1) / PAGE * PAGE;
    if (want == 0) want = PAGE;
    if (g.dyn_map && want <= g.dyn_cap) return;
    if (g.dyn_map) munmap(g.dyn_map, g.dyn_map_len);
    size_t len = want + PAGE;
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("cuda-emu: mmap");
        abort();
    }
    g.dyn_map = static_cast<char*>(p);
    g.dyn_map_len = len;
    g.dyn_cap = want;
    mprotect(g.dyn_map + want, PAGE, PROT_NONE);
}

void* fiber_init(char* stack_lo) {
    // Stack top, 16-byte aligned; the first switch pops 8 bytes of MXCSR/FPU control, six
    // registers, then "returns" into emu_fiber_start with rsp ≡ 0 (mod 16).
    uintptr_t top = (reinterpret_cast<uintptr_t>(stack_lo) + STACK_BYTES) & ~uintptr_t(15);
    uint64_t* sp = reinterpret_cast<uint64_t*>(top - 16);
    *--sp = reinterpret_cast<uint64_t>(&emu_fiber_start);
    for (int i = 0; i < 6; ++i) *--sp = 0;
    --sp;
    uint32_t mxcsr;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    uint16_t fpcw;
    asm volatile("fnstcw %0" : "=m"(fpcw));
    memcpy(reinterpret_cast<char*>(sp), &mxcsr, 4);
    memcpy(reinterpret_cast<char*>(sp) + 4, &fpcw, 2);
    return sp;
}

void to_scheduler() {
    Fiber& f = g.fibers[g.cur];
    RACE(tsan_enter(sched_tsan);)
    emu_switch(&f.sp, g.sched_sp);
}

std::string describe_states() {
    int bar = 0, warp = 0, done = 0;
    for (int i = 0; i < g.n; ++i) {
        State s = g.fibers[i].st;
        bar += s == AT_BAR;
        warp += s == AT_WARP;
        done += s == DONE;
    }
    char buf[200];
    snprintf(buf, sizeof buf, "%d of %d threads wait at __syncthreads, %d at warp collectives, %d have exited",
             bar, g.n, warp, done);
    return buf;
}

// Release the warp collectives whose participants have all arrived. Returns whether any was.
// With `skew` (the shuffled order) each of them is released only with probability 1/2 (at
// least one per call), so warps drift apart by whole collectives, as they do on a GPU: a warp
// that reuses shared memory before a barrier while another still reads it is then caught.
bool resolve_warps(unsigned long long* skew) {
    struct Ready {
        int w0, lane;
        unsigned need;
    };
    std::vector<Ready> ready;
    for (int w0 = 0; w0 < g.n; w0 += 32) {
        const int lanes = std::min(32, g.n - w0);
        const unsigned exists = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
        for (int l = 0; l < lanes; ++l) {
            Fiber& f = g.fibers[w0 + l];
            if (f.st != AT_WARP) continue;
            if (!((f.mask >> l) & 1u))
                throw Failure{"a lane calls a warp collective with a mask that excludes itself"};
            const unsigned need = f.mask & exists;
            bool complete = true;
            for (int r = 0; r < lanes; ++r) {
                if (!((need >> r) & 1u)) continue;
                Fiber& o = g.fibers[w0 + r];
                if (o.st == DONE)
                    throw Failure{"a warp collective's mask names lane " + std::to_string(r) +
                                  ", which has exited"};
                if (o.st != AT_WARP) {
                    complete = false;
                    continue;
                }
                if (o.mask != f.mask || o.fn != f.fn)
                    throw Failure{"lanes of one warp wait at different collectives (divergent "
                                  "shuffle, ballot or WMMA call)"};
            }
            // One entry per collective: at its lowest participating lane.
            if (complete && l == __builtin_ctz(need)) ready.push_back({w0, l, need});
        }
    }
    if (ready.empty()) return false;
    std::vector<char> release(ready.size(), 1);
    if (skew) {
        bool any = false;
        for (char& r : release) {
            *skew = mix(*skew);
            r = (*skew >> 17) & 1;
            any |= r != 0;
        }
        if (!any) {
            *skew = mix(*skew);
            release[*skew % ready.size()] = 1;
        }
    }
    for (size_t k = 0; k < ready.size(); ++k) {
        if (!release[k]) continue;
        const Ready& c = ready[k];
        const int lanes = std::min(32, g.n - c.w0);
        void* data[32] = {};
        for (int r = 0; r < lanes; ++r)
            if ((c.need >> r) & 1u) data[r] = g.fibers[c.w0 + r].data;
#ifdef PRRNET_EMU_RACE
        char* sync = &warp_sync[c.w0 / 32];
        for (int r = 0; r < lanes; ++r)
            if ((c.need >> r) & 1u) {
                tsan_enter(g.fibers[c.w0 + r].tsan);
                __tsan_release(sync);
            }
        tsan_enter(g.fibers[c.w0 + c.lane].tsan);
        __tsan_acquire(sync);
#endif
        g.fibers[c.w0 + c.lane].fn(data, c.need);
#ifdef PRRNET_EMU_RACE
        __tsan_release(sync);
        for (int r = 0; r < lanes; ++r)
            if ((c.need >> r) & 1u) {
                tsan_enter(g.fibers[c.w0 + r].tsan);
                __tsan_acquire(sync);
            }
        tsan_enter(sched_tsan);
#endif
        for (int r = 0; r < lanes; ++r)
            if ((c.need >> r) & 1u) g.fibers[c.w0 + r].st = READY;
    }
    return true;
}

void warn_once(const char* kernel, const char* what) {
    static std::mutex m;
    static std::set<std::string> seen;
    std::lock_guard<std::mutex> lock(m);
    std::string key = std::string(kernel) + what;
    if (seen.insert(key).second) fprintf(stderr, "cuda-emu: warning: kernel %s: %s\n", kernel, what);
}

#ifdef PRRNET_EMU_RACE
// Every thread of the block that is in state `st` releases into `sync`, then every one acquires
// it: a barrier among them (the scheduler's context is current again afterwards).
void tsan_barrier(State st, char* sync) {
    for (int pass = 0; pass < 2; ++pass)
        for (int i = 0; i < g.n; ++i) {
            Fiber& f = g.fibers[i];
            if (f.st != st) continue;
            tsan_enter(f.tsan);
            if (pass == 0) __tsan_release(sync);
            else __tsan_acquire(sync);
        }
    tsan_enter(sched_tsan);
}
#endif

void run_block(size_t smem) {
    if (smem) memset(g.dyn, 0xff, smem);
    RACE(sched_tsan = __tsan_get_current_fiber();)
    for (int i = 0; i < g.n; ++i) {
        Fiber& f = g.fibers[i];
        const unsigned bx = t_bdim.x, by = t_bdim.y;
        f.tid = dim3{i % bx, (i / bx) % by, i / (bx * by)};
        f.st = READY;
        f.sp = fiber_init(f.stack);
        f.open.clear();
        f.committed.clear();
#ifdef PRRNET_EMU_RACE
        // One TSan context per fiber slot, kept from block to block (creating one per block
        // and thread costs more than the kernels): the same thread index continues its history,
        // and every other thread's reaches it through the scheduler at the block's start.
        if (!f.tsan) f.tsan = __tsan_create_fiber(0);
        f.fresh = true;
#endif
    }
    std::vector<int> perm;
    unsigned long long skew = mix(run_order().seed ^ mix(block_index() + 0x5eed));
    for (unsigned long long round = 0;; ++round) {
        round_order(perm, g.n, round);
        for (int k = 0; k < g.n; ++k) {
            const int i = perm[k];
            Fiber& f = g.fibers[i];
            if (f.st != READY) continue;
            g.cur = i;
            t_thread = f.tid;
            in_fiber = true;
#ifdef PRRNET_EMU_RACE
            __tsan_switch_to_fiber(f.tsan, f.fresh ? 0 : __tsan_switch_to_fiber_no_sync);
            f.fresh = false;
#endif
            emu_switch(&g.sched_sp, f.sp);
            in_fiber = false;
            if (f.st == FAILED) throw Failure{g.error};
        }
        int done = 0, bar = 0;
        for (int i = 0; i < g.n; ++i) {
            done += g.fibers[i].st == DONE;
            bar += g.fibers[i].st == AT_BAR;
        }
        if (done == g.n) {
            RACE(tsan_barrier(DONE, &block_sync); __tsan_acquire(&block_sync);)
            return;
        }
        bool progressed = resolve_warps(run_order().kind == Order::SHUFFLE ? &skew : nullptr);
        if (!progressed && bar > 0 && bar + done == g.n) {
            if (done > 0)
                warn_once(g.kernel, "__syncthreads is reached after some threads of the block exited");
            RACE(tsan_barrier(AT_BAR, &barrier_sync);)
            for (int i = 0; i < g.n; ++i)
                if (g.fibers[i].st == AT_BAR) g.fibers[i].st = READY;
            progressed = true;
        }
        if (!progressed) throw Failure{"deadlock: " + describe_states()};
    }
}

}  // namespace

// ---- device-side entry points --------------------------------------------------------------

[[noreturn]] void fail(const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (in_fiber) {
        char where[96];
        snprintf(where, sizeof where, " (thread %u,%u,%u)", t_thread.x, t_thread.y, t_thread.z);
        g.error = std::string(buf) + where;
        Fiber& f = g.fibers[g.cur];
        f.st = FAILED;
        to_scheduler();
        abort();  // a failed fiber is never resumed
    }
    throw Failure{buf};
}

void syncthreads() {
    if (!in_fiber) fail("__syncthreads outside a kernel");
    g.fibers[g.cur].st = AT_BAR;
    to_scheduler();
}

void warp_collective(unsigned mask, CollectiveFn fn, void* data) {
    if (!in_fiber) fail("warp collective outside a kernel");
    Fiber& f = g.fibers[g.cur];
    f.st = AT_WARP;
    f.mask = mask;
    f.fn = fn;
    f.data = data;
    to_scheduler();
}

void* dyn_smem() { return g.dyn; }

void cp_async(void* dst, const void* src, unsigned bytes) {
    if (bytes != 4 && bytes != 8 && bytes != 16) fail("cp.async of %u bytes", bytes);
    if (reinterpret_cast<uintptr_t>(dst) % bytes || reinterpret_cast<uintptr_t>(src) % bytes)
        fail("cp.async of %u bytes from %p to %p is misaligned", bytes, src, dst);
    Copy c;
    c.dst = dst;
    c.n = bytes;
    RACE(__tsan_read_range(const_cast<void*>(src), bytes);)
    memcpy(c.bytes, src, bytes);
    g.fibers[g.cur].open.push_back(c);
}

void cp_async_commit() {
    Fiber& f = g.fibers[g.cur];
    f.committed.push_back(std::move(f.open));
    f.open.clear();
}

void cp_async_wait(int pending) {
    Fiber& f = g.fibers[g.cur];
    while ((int)f.committed.size() > pending) {
        for (const Copy& c : f.committed.front()) {
            RACE(__tsan_write_range(c.dst, c.n);)
            memcpy(c.dst, c.bytes, c.n);
        }
        f.committed.pop_front();
    }
}

void shfl_collective(void* const* lanes, unsigned) {
    for (int l = 0; l < 32; ++l) {
        auto* d = static_cast<ShflData*>(lanes[l]);
        if (!d) continue;
        const int w = d->width;
        if (w <= 0 || w > 32 || (w & (w - 1))) fail("shuffle width %d is not a power of two <= 32", w);
        const int base = l & ~(w - 1);
        int src = l;
        switch (d->kind) {
            case SHFL_XOR: {
                // CUDA: a source in a later width-segment gives the lane its own value.
                const int s = l ^ d->arg;
                src = s >= base + w ? l : s;
                break;
            }
            case SHFL_DOWN: src = (l - base) + d->arg < w ? l + d->arg : l; break;
            case SHFL_UP: src = (l - base) - d->arg >= 0 ? l - d->arg : l; break;
            case SHFL_IDX: src = base + (d->arg % w); break;
        }
        auto* s = static_cast<ShflData*>(lanes[src]);
        // Reading a lane that does not take part is undefined in CUDA: give a NaN pattern.
        d->out = s ? s->v : 0x7ff4dead7ff4deadull;
    }
}

void ballot_collective(void* const* lanes, unsigned) {
    unsigned r = 0;
    for (int l = 0; l < 32; ++l)
        if (lanes[l] && static_cast<VoteData*>(lanes[l])->pred) r |= 1u << l;
    for (int l = 0; l < 32; ++l)
        if (lanes[l]) static_cast<VoteData*>(lanes[l])->out = r;
}

void syncwarp_collective(void* const*, unsigned) {}

// ---- mma.sync --------------------------------------------------------------------------------
namespace {
struct MmaLane {
    float* d;
    unsigned a[4];
    unsigned b[2];
};

float bf16_lo(unsigned v) { return from_bits(v << 16); }
float bf16_hi(unsigned v) { return from_bits(v & 0xffff0000u); }

// D (16×8) += A (16×K) · B (K×8), all lanes present; gather, multiply, scatter.
template <int K>
void mma_finish(void* const* lanes, unsigned mask, const float (&A)[16][K], const float (&B)[K][8]) {
    (void)mask;
    for (int l = 0; l < 32; ++l) {
        auto* m = static_cast<MmaLane*>(lanes[l]);
        const int gq = l >> 2, t = l & 3;
        const int rows[4] = {gq, gq, gq + 8, gq + 8};
        const int cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
        for (int i = 0; i < 4; ++i) {
            float acc = m->d[i];
            for (int k = 0; k < K; ++k) acc += A[rows[i]][k] * B[k][cols[i]];
            m->d[i] = acc;
        }
    }
}

void mma_tf32_collective(void* const* lanes, unsigned mask) {
    if (mask != 0xffffffffu) fail("mma.sync needs the whole warp (mask %08x)", mask);
    float A[16][8], B[8][8];
    for (int l = 0; l < 32; ++l) {
        auto* m = static_cast<MmaLane*>(lanes[l]);
        const int gq = l >> 2, t = l & 3;
        A[gq][t] = trunc_tf32(from_bits(m->a[0]));
        A[gq + 8][t] = trunc_tf32(from_bits(m->a[1]));
        A[gq][t + 4] = trunc_tf32(from_bits(m->a[2]));
        A[gq + 8][t + 4] = trunc_tf32(from_bits(m->a[3]));
        B[t][gq] = trunc_tf32(from_bits(m->b[0]));
        B[t + 4][gq] = trunc_tf32(from_bits(m->b[1]));
    }
    mma_finish<8>(lanes, mask, A, B);
}

void mma_bf16_collective(void* const* lanes, unsigned mask) {
    if (mask != 0xffffffffu) fail("mma.sync needs the whole warp (mask %08x)", mask);
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; ++l) {
        auto* m = static_cast<MmaLane*>(lanes[l]);
        const int gq = l >> 2, t = l & 3;
        const int r[4] = {gq, gq + 8, gq, gq + 8};
        const int c[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
        for (int i = 0; i < 4; ++i) {
            A[r[i]][c[i]] = bf16_lo(m->a[i]);
            A[r[i]][c[i] + 1] = bf16_hi(m->a[i]);
        }
        B[2 * t][gq] = bf16_lo(m->b[0]);
        B[2 * t + 1][gq] = bf16_hi(m->b[0]);
        B[2 * t + 8][gq] = bf16_lo(m->b[1]);
        B[2 * t + 9][gq] = bf16_hi(m->b[1]);
    }
    mma_finish<16>(lanes, mask, A, B);
}
}  // namespace

void mma_m16n8k8_tf32(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                      unsigned b0, unsigned b1) {
    MmaLane m{d, {a0, a1, a2, a3}, {b0, b1}};
    warp_collective(0xffffffffu, mma_tf32_collective, &m);
}

void mma_m16n8k16_bf16(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                       unsigned b0, unsigned b1) {
    MmaLane m{d, {a0, a1, a2, a3}, {b0, b1}};
    warp_collective(0xffffffffu, mma_bf16_collective, &m);
}

// ---- ldmatrix --------------------------------------------------------------------------------
namespace {
struct LdsmLane {
    unsigned* r;
    const void* row;
    int num;
    bool trans;
};

void ldmatrix_collective(void* const* lanes, unsigned mask) {
    if (mask != 0xffffffffu) fail("ldmatrix needs the whole warp (mask %08x)", mask);
    const auto* l0 = static_cast<LdsmLane*>(lanes[0]);
    const int num = l0->num;
    const bool trans = l0->trans;
    if (num != 1 && num != 2 && num != 4) fail("ldmatrix .x%d", num);
    uint16_t m[4][8][8];
    for (int l = 0; l < 32; ++l) {
        const auto* d = static_cast<LdsmLane*>(lanes[l]);
        if (d->num != num || d->trans != trans) fail("ldmatrix: lanes disagree on .x/.trans");
        if (l >= 8 * num) continue;
        const auto a = reinterpret_cast<uintptr_t>(d->row);
        if (a == 0 || a % 16) fail("ldmatrix: lane %d row address %p is not 16-byte aligned", l, d->row);
        RACE(__tsan_read_range(const_cast<void*>(d->row), 16);)
        memcpy(m[l / 8][l % 8], d->row, 16);
    }
    for (int l = 0; l < 32; ++l) {
        auto* d = static_cast<LdsmLane*>(lanes[l]);
        const int g = l / 4, t = l % 4;
        for (int k = 0; k < num; ++k) {
            const uint16_t lo = trans ? m[k][2 * t][g] : m[k][g][2 * t];
            const uint16_t hi = trans ? m[k][2 * t + 1][g] : m[k][g][2 * t + 1];
            d->r[k] = (unsigned)lo | ((unsigned)hi << 16);
        }
    }
}
}  // namespace

void ldmatrix(unsigned* r, int num, bool trans, const void* row) {
    LdsmLane d{r, row, num, trans};
    warp_collective(0xffffffffu, ldmatrix_collective, &d);
}

// ---- the launch ------------------------------------------------------------------------------

thread_local const char* current_kernel = nullptr;

std::string run_kernel(const char* name, dim3 grid, dim3 block, size_t smem,
                       const std::function<void()>& body) {
    const uint64_t threads = (uint64_t)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024) return "block of " + std::to_string(threads) + " threads";
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return "empty grid";
    g.n = (int)threads;
    g.body = &body;
    g.kernel = name;
    g.error.clear();
    ensure_fibers(g.n);
    ensure_dyn(smem);
    g.dyn = smem ? g.dyn_map + g.dyn_cap - ((smem + 127) / 128 * 128) : g.dyn_map + g.dyn_cap;
    t_bdim = block;
    t_gdim = grid;
    current_kernel = name;
    std::string err;
    try {
        for (unsigned z = 0; z < grid.z && err.empty(); ++z)
            for (unsigned y = 0; y < grid.y && err.empty(); ++y)
                for (unsigned x = 0; x < grid.x; ++x) {
                    t_block = dim3{x, y, z};
                    run_block(smem);
                }
    } catch (const Failure& f) {
        char where[96];
        snprintf(where, sizeof where, "block (%u,%u,%u): ", t_block.x, t_block.y, t_block.z);
        err = where + f.msg;
    }
    current_kernel = nullptr;
    return err;
}

// ---- invalid memory accesses -----------------------------------------------------------------
namespace {
struct sigaction old_segv;

void on_segv(int sig, siginfo_t* info, void* uctx) {
    if (current_kernel) {
        char buf[400];
        int n = snprintf(buf, sizeof buf,
                         "\ncuda-emu: invalid memory access at %p in kernel %s, block (%u,%u,%u), "
                         "thread (%u,%u,%u) (past the end of a device buffer, of dynamic shared "
                         "memory, or a fiber stack overflow)\n",
                         info->si_addr, current_kernel, t_block.x, t_block.y, t_block.z,
                         t_thread.x, t_thread.y, t_thread.z);
        if (n > 0) {
            ssize_t w = write(2, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf);
            (void)w;
        }
        signal(SIGSEGV, SIG_DFL);
        return;  // the access faults again, now fatally
    }
    if (old_segv.sa_flags & SA_SIGINFO) {
        old_segv.sa_sigaction(sig, info, uctx);
    } else if (old_segv.sa_handler != SIG_IGN && old_segv.sa_handler != SIG_DFL) {
        old_segv.sa_handler(sig);
    } else {
        signal(SIGSEGV, SIG_DFL);
    }
}
}  // namespace

void install_fault_reporter() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa {};
        sa.sa_sigaction = on_segv;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &old_segv);
    });
}

}  // namespace emu

extern "C" void emu_fiber_main() {
    using namespace emu;
    (*g.body)();
    Fiber& f = g.fibers[g.cur];
    f.st = DONE;
    RACE(tsan_enter(sched_tsan);)
    emu_switch(&f.sp, g.sched_sp);
    abort();
}

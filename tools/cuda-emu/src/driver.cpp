// cuda-emu: the CUDA driver API and the cuBLAS calls prrnet makes, implemented on the CPU, in one
// shared library that stands in for libcuda.so.1 and libcublas.so.13 (see README.md).
//
// Device memory is host memory: every allocation ends at an inaccessible page (reading or
// writing past its end faults and names the kernel) and starts filled with 0xFF bytes (a NaN in
// every float), so a kernel that reads what nobody wrote shows it. Work on a stream runs when it
// is submitted, except while the stream is being captured: then it is recorded into the graph
// and runs at cuGraphLaunch. Synchronising a capturing stream fails and invalidates the capture,
// as it does on a GPU.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "emu_sched.h"

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

enum : int {
    OK = 0,
    ERR_INVALID_VALUE = 1,
    ERR_OUT_OF_MEMORY = 2,
    ERR_INVALID_HANDLE = 400,
    ERR_NOT_FOUND = 500,
    ERR_LAUNCH_FAILED = 719,
    ERR_NOT_SUPPORTED = 801,
    ERR_CAPTURE_UNSUPPORTED = 900,
    ERR_CAPTURE_INVALIDATED = 901,
    ERR_CAPTURE_IMPLICIT = 906,
};

namespace {

using Op = std::function<CUresult()>;

struct Stream {
    std::mutex m;
    bool capturing = false;
    bool invalidated = false;
    std::vector<Op> recorded;
};
struct Graph {
    std::vector<Op> ops;
};
struct Function {
    const emu::KernelEntry* k;
    int max_dyn = 48 * 1024;
};
struct Event {
    std::atomic<double> ms{0.0};
};
struct Module {
    int unused;
};

constexpr size_t PAGE = 4096;
constexpr unsigned long long TOTAL_MEM = 80ull << 30;
constexpr int MAX_SMEM_OPTIN = 232448;  // an H100's 227 KiB

std::mutex mem_lock;
struct Mapping {
    char* base;
    size_t len;
    size_t bytes;
};
std::map<uintptr_t, Mapping> allocations;
size_t allocated = 0;
std::atomic<int> captures{0};
int ctx_token;

bool verbose() {
    static const bool v = getenv("PRRNET_EMU_VERBOSE") != nullptr;
    return v;
}

double now_ms() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

CUresult submit(void* s, Op op) {
    Stream* st = static_cast<Stream*>(s);
    if (st) {
        std::lock_guard<std::mutex> lock(st->m);
        if (st->capturing) {
            st->recorded.push_back(std::move(op));
            return OK;
        }
    }
    return op();
}

// A synchronous call while this stream (or, for the null stream, any stream) is capturing.
CUresult refuse_during_capture(void* s, const char* what) {
    Stream* st = static_cast<Stream*>(s);
    bool hit = false;
    if (st) {
        std::lock_guard<std::mutex> lock(st->m);
        if (st->capturing) st->invalidated = hit = true;
    } else {
        hit = captures.load() > 0;
    }
    if (hit) {
        fprintf(stderr, "cuda-emu: %s during stream capture (not allowed; the capture is invalidated)\n",
                what);
        return ERR_CAPTURE_UNSUPPORTED;
    }
    return OK;
}

CUresult alloc(CUdeviceptr* out, size_t bytes) {
    {
        std::lock_guard<std::mutex> lock(mem_lock);
        if (bytes > TOTAL_MEM - allocated) return ERR_OUT_OF_MEMORY;
    }
    const size_t usable = ((bytes ? bytes : 1) + 15) / 16 * 16;
    const size_t body = (usable + PAGE - 1) / PAGE * PAGE;
    const size_t len = body + PAGE;
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) return ERR_OUT_OF_MEMORY;
    char* base = static_cast<char*>(p);
    mprotect(base + body, PAGE, PROT_NONE);
    char* ptr = base + body - usable;
    memset(ptr, 0xff, usable);
    std::lock_guard<std::mutex> lock(mem_lock);
    if (allocated + bytes > TOTAL_MEM) {
        munmap(base, len);
        return ERR_OUT_OF_MEMORY;
    }
    allocations[reinterpret_cast<uintptr_t>(ptr)] = Mapping{base, len, bytes};
    allocated += bytes;
    *out = reinterpret_cast<CUdeviceptr>(ptr);
    return OK;
}

CUresult release(CUdeviceptr p) {
    if (!p) return OK;
    std::lock_guard<std::mutex> lock(mem_lock);
    auto it = allocations.find(p);
    if (it == allocations.end()) {
        fprintf(stderr, "cuda-emu: cuMemFree of %#llx, which is not an allocation\n", p);
        return ERR_INVALID_VALUE;
    }
    munmap(it->second.base, it->second.len);
    allocated -= it->second.bytes;
    allocations.erase(it);
    return OK;
}

CUresult run_all(const std::vector<Op>& ops) {
    for (const Op& op : ops) {
        CUresult r = op();
        if (r != OK) return r;
    }
    return OK;
}

std::mutex registry_lock;
std::unordered_map<std::string, emu::KernelEntry>& registry() {
    static std::unordered_map<std::string, emu::KernelEntry> r;
    return r;
}

}  // namespace

namespace emu {
void register_kernel(const KernelEntry& k) {
    std::lock_guard<std::mutex> lock(registry_lock);
    registry()[k.name] = k;
}
const KernelEntry* find_kernel(const char* name) {
    std::lock_guard<std::mutex> lock(registry_lock);
    auto it = registry().find(name);
    return it == registry().end() ? nullptr : &it->second;
}
}  // namespace emu

#define API extern "C" __attribute__((visibility("default")))

// ---- initialisation, device, context -------------------------------------------------------
API CUresult cuInit(unsigned) {
    emu::install_fault_reporter();
    return OK;
}
API CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return OK;
}
API CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return OK;
}
API CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return ERR_INVALID_VALUE;
    *d = 0;
    return OK;
}
API CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, len, "cuda-emu (kernels emulated on the CPU)");
    return OK;
}
API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = TOTAL_MEM;
    return OK;
}
API CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice) {
    switch (attr) {
        case 75: *v = 9; break;                 // compute capability major
        case 76: *v = 0; break;                 // minor
        case 16: *v = 132; break;               // multiprocessors
        case 1: *v = 1024; break;               // max threads per block
        case 2: case 3: *v = 1024; break;       // max block x, y
        case 4: *v = 64; break;                 // max block z
        case 5: *v = 2147483647; break;         // max grid x
        case 6: case 7: *v = 65535; break;      // max grid y, z
        case 8: *v = 48 * 1024; break;          // shared memory per block
        case 97: *v = MAX_SMEM_OPTIN; break;    // shared memory per block, opt-in
        case 10: *v = 32; break;                // warp size
        case 36: *v = 2619000; break;           // memory clock (kHz)
        case 37: *v = 5120; break;              // bus width
        case 13: *v = 1980000; break;           // clock (kHz)
        case 115: *v = 0; break;                // memory pools: no (plain cuMemAlloc)
        default: *v = 0; break;
    }
    return OK;
}
API CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice) {
    *ctx = &ctx_token;
    return OK;
}
API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return OK; }
API CUresult cuCtxSetCurrent(void*) { return OK; }
API CUresult cuCtxGetCurrent(void** ctx) {
    *ctx = &ctx_token;
    return OK;
}
API CUresult cuCtxGetDevice(CUdevice* d) {
    *d = 0;
    return OK;
}
API CUresult cuCtxPushCurrent_v2(void*) { return OK; }
API CUresult cuCtxPopCurrent_v2(void** ctx) {
    if (ctx) *ctx = &ctx_token;
    return OK;
}
API CUresult cuCtxSynchronize() { return refuse_during_capture(nullptr, "cuCtxSynchronize"); }
API CUresult cuGetErrorString(CUresult r, const char** s) {
    switch (r) {
        case ERR_LAUNCH_FAILED: *s = "cuda-emu: the kernel failed (see the message above)"; break;
        case ERR_CAPTURE_UNSUPPORTED: *s = "operation not permitted when stream is capturing"; break;
        case ERR_CAPTURE_INVALIDATED: *s = "operation failed due to a previous error during capture"; break;
        case ERR_OUT_OF_MEMORY: *s = "out of memory"; break;
        case ERR_NOT_FOUND: *s = "named symbol not found"; break;
        default: *s = "cuda-emu error"; break;
    }
    return OK;
}
API CUresult cuGetErrorName(CUresult r, const char** s) {
    switch (r) {
        case OK: *s = "CUDA_SUCCESS"; break;
        case ERR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case ERR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case ERR_LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
        case ERR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case ERR_CAPTURE_UNSUPPORTED: *s = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"; break;
        case ERR_CAPTURE_INVALIDATED: *s = "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"; break;
        default: *s = "CUDA_ERROR_UNKNOWN"; break;
    }
    return OK;
}
API CUresult cuProfilerStart() { return OK; }
API CUresult cuProfilerStop() { return OK; }

// ---- streams and events ----------------------------------------------------------------------
API CUresult cuStreamCreate(void** s, unsigned) {
    *s = new Stream;
    return OK;
}
API CUresult cuStreamCreateWithPriority(void** s, unsigned, int) {
    *s = new Stream;
    return OK;
}
API CUresult cuStreamDestroy_v2(void* s) {
    delete static_cast<Stream*>(s);
    return OK;
}
API CUresult cuStreamSynchronize(void* s) { return refuse_during_capture(s, "cuStreamSynchronize"); }
API CUresult cuStreamQuery(void*) { return OK; }
API CUresult cuStreamWaitEvent(void*, void*, unsigned) { return OK; }
API CUresult cuEventCreate(void** e, unsigned) {
    *e = new Event;
    return OK;
}
API CUresult cuEventDestroy_v2(void* e) {
    delete static_cast<Event*>(e);
    return OK;
}
API CUresult cuEventRecord(void* e, void* s) {
    Event* ev = static_cast<Event*>(e);
    return submit(s, [ev] {
        ev->ms = now_ms();
        return OK;
    });
}
API CUresult cuEventRecordWithFlags(void* e, void* s, unsigned) { return cuEventRecord(e, s); }
API CUresult cuEventSynchronize(void*) { return OK; }
API CUresult cuEventQuery(void*) { return OK; }
API CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) {
    *ms = (float)(static_cast<Event*>(b)->ms - static_cast<Event*>(a)->ms);
    return OK;
}
API CUresult cuEventElapsedTime(float* ms, void* a, void* b) { return cuEventElapsedTime_v2(ms, a, b); }

// ---- memory ----------------------------------------------------------------------------------
API CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    if (captures.load() > 0 && verbose())
        fprintf(stderr, "cuda-emu: note: cuMemAlloc while a stream is capturing\n");
    return alloc(p, bytes);
}
API CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void*) { return alloc(p, bytes); }
API CUresult cuMemFree_v2(CUdeviceptr p) { return release(p); }
API CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return release(p); }
API CUresult cuMemGetInfo_v2(size_t* free_b, size_t* total) {
    std::lock_guard<std::mutex> lock(mem_lock);
    *total = TOTAL_MEM;
    *free_b = TOTAL_MEM - allocated;
    return OK;
}
API CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    *p = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    return *p ? OK : ERR_OUT_OF_MEMORY;
}
API CUresult cuMemAllocHost_v2(void** p, size_t bytes) { return cuMemHostAlloc(p, bytes, 0); }
API CUresult cuMemFreeHost(void* p) {
    free(p);
    return OK;
}
API CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, void* s) {
    return submit(s, [=] {
        memset(reinterpret_cast<void*>(p), v, n);
        return OK;
    });
}
API CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) {
    if (CUresult r = refuse_during_capture(nullptr, "cuMemsetD8")) return r;
    memset(reinterpret_cast<void*>(p), v, n);
    return OK;
}
API CUresult cuMemsetD32Async(CUdeviceptr p, unsigned v, size_t n, void* s) {
    return submit(s, [=] {
        unsigned* d = reinterpret_cast<unsigned*>(p);
        for (size_t i = 0; i < n; ++i) d[i] = v;
        return OK;
    });
}
API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* s) {
    return submit(s, [=] {
        memcpy(reinterpret_cast<void*>(dst), src, n);
        return OK;
    });
}
API CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void* s) {
    return submit(s, [=] {
        memcpy(dst, reinterpret_cast<const void*>(src), n);
        return OK;
    });
}
API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void* s) {
    return submit(s, [=] {
        memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
        return OK;
    });
}
API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    if (CUresult r = refuse_during_capture(nullptr, "cuMemcpyHtoD")) return r;
    memcpy(reinterpret_cast<void*>(dst), src, n);
    return OK;
}
API CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    if (CUresult r = refuse_during_capture(nullptr, "cuMemcpyDtoH")) return r;
    memcpy(dst, reinterpret_cast<const void*>(src), n);
    return OK;
}
API CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    if (CUresult r = refuse_during_capture(nullptr, "cuMemcpyDtoD")) return r;
    memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
    return OK;
}

// ---- modules and launches --------------------------------------------------------------------
API CUresult cuModuleLoadData(void** m, const void*) {
    *m = new Module{0};
    return OK;
}
API CUresult cuModuleUnload(void* m) {
    delete static_cast<Module*>(m);
    return OK;
}
API CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    const emu::KernelEntry* k = emu::find_kernel(name);
    if (!k) {
        fprintf(stderr, "cuda-emu: no emulated kernel named %s\n", name);
        return ERR_NOT_FOUND;
    }
    *f = new Function{k};
    return OK;
}
API CUresult cuFuncSetAttribute(void* f, int attr, int value) {
    if (attr == 8) {  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        if (value > MAX_SMEM_OPTIN) return ERR_INVALID_VALUE;
        static_cast<Function*>(f)->max_dyn = value;
    }
    return OK;
}
API CUresult cuFuncGetAttribute(int* v, int attr, void* f) {
    const Function* fn = static_cast<Function*>(f);
    if (attr == 0)  // CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: the launch bound, else the device's
        *v = fn->k->max_threads ? (int)fn->k->max_threads : 1024;
    else
        *v = attr == 8 ? fn->max_dyn : 0;
    return OK;
}
API CUresult cuLaunchKernel(void* fp, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                            unsigned bz, unsigned smem, void* s, void** params, void** extra) {
    Function* f = static_cast<Function*>(fp);
    const char* name = f->k->name;
    if (extra) {
        fprintf(stderr, "cuda-emu: %s: the `extra` launch parameter is not supported\n", name);
        return ERR_NOT_SUPPORTED;
    }
    if ((int)smem > f->max_dyn) {
        fprintf(stderr,
                "cuda-emu: %s: %u bytes of dynamic shared memory without raising "
                "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES (now %d)\n",
                name, smem, f->max_dyn);
        return ERR_INVALID_VALUE;
    }
    if ((unsigned long long)bx * by * bz > 1024 || bz > 64 || gy > 65535 || gz > 65535 || !gx || !gy ||
        !gz || !bx || !by || !bz) {
        fprintf(stderr, "cuda-emu: %s: invalid launch grid (%u,%u,%u) block (%u,%u,%u)\n", name, gx, gy,
                gz, bx, by, bz);
        return ERR_INVALID_VALUE;
    }
    if (f->k->max_threads && (unsigned long long)bx * by * bz > f->k->max_threads) {
        fprintf(stderr,
                "cuda-emu: %s: a block of %llu threads is more than its __launch_bounds__ allow "
                "(%u); a GPU refuses the launch\n",
                name, (unsigned long long)bx * by * bz, f->k->max_threads);
        return ERR_INVALID_VALUE;
    }
    std::function<void()> body = f->k->bind(params);
    const emu::dim3 grid{gx, gy, gz}, block{bx, by, bz};
    return submit(s, [=] {
        if (verbose())
            fprintf(stderr, "cuda-emu: %s grid (%u,%u,%u) block (%u,%u,%u) smem %u\n", name, gx, gy, gz,
                    bx, by, bz, smem);
        std::string err = emu::run_kernel(name, grid, block, smem, body);
        if (err.empty()) return OK;
        fprintf(stderr, "cuda-emu: kernel %s failed: %s\n", name, err.c_str());
        return ERR_LAUNCH_FAILED;
    });
}

// ---- graphs ----------------------------------------------------------------------------------
API CUresult cuStreamBeginCapture_v2(void* s, int) {
    Stream* st = static_cast<Stream*>(s);
    if (!st) return ERR_CAPTURE_UNSUPPORTED;  // the legacy stream cannot be captured
    std::lock_guard<std::mutex> lock(st->m);
    if (st->capturing) return ERR_INVALID_VALUE;
    st->capturing = true;
    st->invalidated = false;
    st->recorded.clear();
    captures++;
    return OK;
}
API CUresult cuStreamEndCapture(void* s, void** graph) {
    Stream* st = static_cast<Stream*>(s);
    if (!st) return ERR_INVALID_VALUE;
    std::lock_guard<std::mutex> lock(st->m);
    if (!st->capturing) return ERR_INVALID_VALUE;
    st->capturing = false;
    captures--;
    if (st->invalidated) {
        st->recorded.clear();
        *graph = nullptr;
        return ERR_CAPTURE_INVALIDATED;
    }
    Graph* g = new Graph;
    g->ops.swap(st->recorded);
    *graph = g;
    return OK;
}
API CUresult cuStreamIsCapturing(void* s, int* status) {
    Stream* st = static_cast<Stream*>(s);
    *status = 0;
    if (st) {
        std::lock_guard<std::mutex> lock(st->m);
        *status = st->capturing ? (st->invalidated ? 2 : 1) : 0;
    }
    return OK;
}
API CUresult cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
    if (!graph) return ERR_INVALID_VALUE;
    *exec = new Graph(*static_cast<Graph*>(graph));
    return OK;
}
API CUresult cuGraphUpload(void*, void*) { return OK; }
API CUresult cuGraphLaunch(void* exec, void* s) {
    Graph* g = static_cast<Graph*>(exec);
    if (!g) return ERR_INVALID_HANDLE;
    std::vector<Op> ops = g->ops;
    return submit(s, [ops] { return run_all(ops); });
}
API CUresult cuGraphExecDestroy(void* exec) {
    delete static_cast<Graph*>(exec);
    return OK;
}
API CUresult cuGraphDestroy(void* graph) {
    delete static_cast<Graph*>(graph);
    return OK;
}

// The submission path, for the cuBLAS half of the library (cublas.cpp).
CUresult emu_submit(void* stream, std::function<CUresult()> op) { return submit(stream, std::move(op)); }

// A CPU emulation of the CUDA features `wkv.cu` uses, so that tests run the kernels' own code
// on machines without a GPU (see `emulator.rs`). Blocks run one after another; the threads of
// a block are OS threads, `__syncthreads()` is a barrier between them, and `__shared__`
// arrays are function statics, shared by the block's threads like shared memory.
//
// Built by the tests with the host C++ compiler: c++ -std=c++17 -shared -fPIC -pthread.

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

using std::min;

struct Dim3 {
    unsigned x, y, z;
};

struct Barrier {
    std::mutex mutex;
    std::condition_variable changed;
    unsigned count = 0;
    unsigned waiting = 0;
    unsigned generation = 0;

    void wait() {
        std::unique_lock<std::mutex> lock(mutex);
        const unsigned gen = generation;
        if (++waiting == count) {
            waiting = 0;
            generation++;
            changed.notify_all();
        } else {
            changed.wait(lock, [&] { return gen != generation; });
        }
    }
};

static thread_local Dim3 threadIdx;
static thread_local Dim3 blockIdx;
static Dim3 blockDim;
static Barrier block_barrier;
static std::vector<float> dynamic_shared;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(threads)
#define __restrict__ __restrict
#define __shared__ static
#define __syncthreads() block_barrier.wait()
#define WKV_DYNAMIC_SHARED(name) float* name = dynamic_shared.data()

#include "wkv.cu"

// Calls `kernel` with the arguments `params` points at, as cuLaunchKernel would.
template <class... Args, std::size_t... I>
static void call(void (*kernel)(Args...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<Args*>(params[I])...);
}

template <class... Args>
static void run(void (*kernel)(Args...), unsigned grid, unsigned block, std::size_t shared_bytes,
                void** params) {
    blockDim = Dim3{block, 1, 1};
    block_barrier.count = block;
    dynamic_shared.assign(shared_bytes / sizeof(float), 0.0f);
    for (unsigned b = 0; b < grid; b++) {
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block; t++) {
            threads.emplace_back([=] {
                blockIdx = Dim3{b, 0, 0};
                threadIdx = Dim3{t, 0, 0};
                call(kernel, params, std::index_sequence_for<Args...>{});
            });
        }
        for (auto& thread : threads) thread.join();
    }
}

// Returns 0, or 1 for an unknown kernel name.
extern "C" int emulator_launch(const char* name, unsigned grid, unsigned block,
                               std::size_t shared_bytes, void** params) {
#define KERNEL(k)                                                 \
    if (std::strcmp(name, #k) == 0) {                             \
        run(&k, grid, block, shared_bytes, params);               \
        return 0;                                                 \
    }
    KERNEL(wkv4_forward)
    KERNEL(wkv4_backward)
    KERNEL(wkv5_forward)
    KERNEL(wkv5_backward)
    KERNEL(wkv7_forward)
    KERNEL(wkv7_backward)
    return 1;
}

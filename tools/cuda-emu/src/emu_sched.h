// cuda-emu: the interface between the fake driver (driver.cpp) and the block scheduler.
#pragma once
#include <functional>
#include <string>

#include "emu.h"

namespace emu {

// Run every block of one launch on this host thread. Returns "" or what went wrong.
std::string run_kernel(const char* name, dim3 grid, dim3 block, size_t smem,
                       const std::function<void()>& body);

// Report a segmentation fault inside a kernel with the kernel's name, block and thread.
void install_fault_reporter();

// A kernel the build registered: `bind` copies the launch's parameters (void** as in
// cuLaunchKernel) into a closure that runs the kernel for one CUDA thread.
struct KernelEntry {
    const char* name;
    std::function<std::function<void()>(void** params)> bind;
    // Its __launch_bounds__' most threads per block; 0: none given (the device's 1024).
    unsigned max_threads;
};
void register_kernel(const KernelEntry& k);
const KernelEntry* find_kernel(const char* name);

}  // namespace emu

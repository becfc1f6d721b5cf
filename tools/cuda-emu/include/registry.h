// cuda-emu: registration of a kernel file's extern "C" kernels, used by the wrapper translation
// unit the build script generates for each kernels/*.cu.
#pragma once
#include <cstddef>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../src/emu_sched.h"

namespace emu {

template <class... A, size_t... I>
std::tuple<std::decay_t<A>...> unpack(void** params, std::index_sequence<I...>) {
    return std::tuple<std::decay_t<A>...>(*static_cast<std::decay_t<A>*>(params[I])...);
}

template <class... A>
KernelEntry kernel(const char* name, void (*f)(A...), unsigned max_threads) {
    return KernelEntry{name,
                       [f](void** params) {
                           auto args = unpack<A...>(params, std::index_sequence_for<A...>{});
                           return std::function<void()>([f, args] { std::apply(f, args); });
                       },
                       max_threads};
}

struct Registrar {
    Registrar(std::initializer_list<KernelEntry> ks) {
        for (const KernelEntry& k : ks) register_kernel(k);
    }
};

}  // namespace emu

// Which of the per-instruction-set kernel tables to run: ATen's own choice (it honours
// ATEN_CPU_CAPABILITY), limited to what this build compiled.
#pragma once

#include <ATen/Version.h>

#include <string>

namespace uaal::cpu {

// The address of CAPABILITY::getter when that capability was compiled, else nullptr.
#if defined(UAAL_HAVE_CPU_AVX2)
#define UAAL_CPU_AVX2_TABLE(getter) (&::uaal::cpu::AVX2::getter)
#else
#define UAAL_CPU_AVX2_TABLE(getter) nullptr
#endif
#if defined(UAAL_HAVE_CPU_AVX512)
#define UAAL_CPU_AVX512_TABLE(getter) (&::uaal::cpu::AVX512::getter)
#else
#define UAAL_CPU_AVX512_TABLE(getter) nullptr
#endif

template <typename Table>
const Table& best_kernel_table(const Table& (*default_table)(), const Table& (*avx2_table)(),
                               const Table& (*avx512_table)()) {
  const std::string capability = at::get_cpu_capability();
  const bool avx512 = capability.find("AVX512") != std::string::npos;
  const bool avx2 = avx512 || capability.find("AVX2") != std::string::npos;
  if (avx512 && avx512_table) return avx512_table();
  if (avx2 && avx2_table) return avx2_table();
  return default_table();
}

}  // namespace uaal::cpu

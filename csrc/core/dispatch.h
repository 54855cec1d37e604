// Run-time description of a call -> compile-time template parameters, so each kernel variant
// carries no branches on them: the logits' dtype (dispatch_float_type), and any enum or bool a
// family turns into its own kernels (dispatch_constant, which the families' dispatch_variant and
// dispatch_score_method are written with).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

#include "core/pixel_geometry.h"

namespace uaal {

// `fn(scalar_t{}, acc_t{})` for the logits' type and its accumulation type.
template <typename Fn>
void dispatch_float_type(FloatType type, Fn&& fn) {
  switch (type) {
    case FloatType::kFloat64: return fn(double{}, double{});
    case FloatType::kFloat32: return fn(float{}, float{});
    case FloatType::kFloat16: return fn(c10::Half{}, float{});
    case FloatType::kBFloat16: return fn(c10::BFloat16{}, float{});
  }
}

// `fn(std::integral_constant<T, v>{})` for the v among kValues that equals `value` (no call when none
// does), so that each value gets its own instantiation of fn's body.
template <auto... kValues, typename T, typename Fn>
void dispatch_constant(T value, Fn&& fn) {
  static_assert((std::is_same_v<decltype(kValues), T> && ...), "kValues must have the type of `value`");
  const auto call_if_equal = [&](auto constant) {
    if (value != decltype(constant)::value) return false;
    fn(constant);
    return true;
  };
  (call_if_equal(std::integral_constant<T, kValues>{}) || ...);
}

}  // namespace uaal

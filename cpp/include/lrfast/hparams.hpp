// Per-step scalars of each optimizer, computed once per call on the host in
// double (lrfast/_hparams.py) and cast to the tensor's type inside a kernel.
//
// Every field is a double, flags included (0 or 1), so that the binding can fill
// a struct by field name from a Python dict with one generic function; `fields`
// lists the names in declaration order and is checked against sizeof at compile
// time. The meaning of each field is the torch.optim formula in lrfast/reference.py.
//
// grad_scale is the signed gradient multiplier: the user's grad_scale, negated
// when maximize is set. Negation is exact, so g * (-s) equals torch's -(g) * s.
#pragma once

#include <array>

namespace lrfast {

struct SgdParams {
    double lr, momentum, dampening, weight_decay, grad_scale;
    double nesterov, first_step;  // first_step: the buffer takes the gradient itself
    static constexpr std::array<const char*, 7> fields{
        "lr", "momentum", "dampening", "weight_decay", "grad_scale", "nesterov", "first_step"};
};

struct AdamParams {
    double lr, beta1, beta2, eps, weight_decay, grad_scale;
    double step_size;              // lr / (1 - beta1^step)
    double bias_correction2_sqrt;  // sqrt(1 - beta2^step)
    double decoupled, amsgrad;     // decoupled: AdamW's p *= 1 - lr * weight_decay
    static constexpr std::array<const char*, 10> fields{
        "lr", "beta1", "beta2", "eps", "weight_decay", "grad_scale",
        "step_size", "bias_correction2_sqrt", "decoupled", "amsgrad"};
};

struct RmspropParams {
    double lr, alpha, eps, weight_decay, momentum, grad_scale, centered;
    static constexpr std::array<const char*, 7> fields{
        "lr", "alpha", "eps", "weight_decay", "momentum", "grad_scale", "centered"};
};

struct AdagradParams {
    double clr;  // lr / (1 + (step - 1) * lr_decay)
    double eps, weight_decay, grad_scale;
    static constexpr std::array<const char*, 4> fields{"clr", "eps", "weight_decay", "grad_scale"};
};

struct AdadeltaParams {
    double lr, rho, eps, weight_decay, grad_scale;
    static constexpr std::array<const char*, 5> fields{
        "lr", "rho", "eps", "weight_decay", "grad_scale"};
};

}  // namespace lrfast

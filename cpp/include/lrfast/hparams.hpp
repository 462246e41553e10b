// Per-step scalars of each optimizer, computed once per call on the host in
// double (lrfast/_hparams.py) and cast to the tensor's type inside a kernel.
//
// Every field is a double, flags included (0 or 1), so that the binding can fill
// a struct by field name from a Python dict with one generic function; `fields`
// lists the names in declaration order and is checked against sizeof at compile
// time. The meaning of each field is the torch.optim formula in lrfast/reference.py.
//
// Every struct ends with the rounding of 16-bit params: stochastic_rounding
// (a flag) and sr_key, the 32-bit key of lrfast.precision.random_bits for this
// call's seed and step (key(h) = H(sr_key ^ h)), computed on the host.
//
// grad_scale is the signed gradient multiplier: the user's grad_scale, negated
// when maximize is set. Negation is exact, so g * (-s) equals torch's -(g) * s.
#pragma once

#include <array>

namespace lrfast {

struct SgdParams {
    double lr, momentum, dampening, weight_decay, grad_scale;
    double nesterov, first_step;  // first_step: the buffer takes the gradient itself
    double stochastic_rounding, sr_key;
    static constexpr std::array<const char*, 9> fields{
        "lr", "momentum", "dampening", "weight_decay", "grad_scale", "nesterov", "first_step",
        "stochastic_rounding", "sr_key"};
};

struct AdamParams {
    double lr, beta1, beta2, eps, weight_decay, grad_scale;
    double step_size;              // lr / (1 - beta1^step)
    double bias_correction2_sqrt;  // sqrt(1 - beta2^step)
    double decoupled, amsgrad;     // decoupled: AdamW's p *= 1 - lr * weight_decay
    double stochastic_rounding, sr_key;
    static constexpr std::array<const char*, 12> fields{
        "lr", "beta1", "beta2", "eps", "weight_decay", "grad_scale",
        "step_size", "bias_correction2_sqrt", "decoupled", "amsgrad",
        "stochastic_rounding", "sr_key"};
};

struct RmspropParams {
    double lr, alpha, eps, weight_decay, momentum, grad_scale, centered;
    double stochastic_rounding, sr_key;
    static constexpr std::array<const char*, 9> fields{
        "lr", "alpha", "eps", "weight_decay", "momentum", "grad_scale", "centered",
        "stochastic_rounding", "sr_key"};
};

struct AdagradParams {
    double clr;  // lr / (1 + (step - 1) * lr_decay)
    double eps, weight_decay, grad_scale;
    double stochastic_rounding, sr_key;
    static constexpr std::array<const char*, 6> fields{
        "clr", "eps", "weight_decay", "grad_scale", "stochastic_rounding", "sr_key"};
};

struct AdadeltaParams {
    double lr, rho, eps, weight_decay, grad_scale;
    double stochastic_rounding, sr_key;
    static constexpr std::array<const char*, 7> fields{
        "lr", "rho", "eps", "weight_decay", "grad_scale", "stochastic_rounding", "sr_key"};
};

// The optimizers that take the learning rate off the user's hands
// (lrfast/reference_lr_free.py); each kernel combines these fields into the
// reference's scalars, in double, once per call.

struct LionParams {
    double lr, beta1, beta2, weight_decay, grad_scale;
    double stochastic_rounding, sr_key;
    static constexpr std::array<const char*, 7> fields{
        "lr", "beta1", "beta2", "weight_decay", "grad_scale", "stochastic_rounding", "sr_key"};
};

// ckp1: the weight of the newest point in schedule-free's average x.
struct ScheduleFreeSgdParams {
    double lr, ckp1, momentum, weight_decay, grad_scale;
    double stochastic_rounding, sr_key;
    static constexpr std::array<const char*, 7> fields{
        "lr", "ckp1", "momentum", "weight_decay", "grad_scale", "stochastic_rounding", "sr_key"};
};

struct ScheduleFreeAdamwParams {
    double lr, ckp1, beta1, beta2, eps, weight_decay, grad_scale;
    double bias_correction2;  // 1 - beta2^step
    double stochastic_rounding, sr_key;
    static constexpr std::array<const char*, 10> fields{
        "lr", "ckp1", "beta1", "beta2", "eps", "weight_decay", "grad_scale", "bias_correction2",
        "stochastic_rounding", "sr_key"};
};

// eval() and train(): param = lerp(param, z, weight); no grads.
struct ScheduleFreeLerpParams {
    double weight;
    double stochastic_rounding, sr_key;
    static constexpr std::array<const char*, 3> fields{"weight", "stochastic_rounding", "sr_key"};
};

// Prodigy's update pass: d the estimate the step started with, d_new the new
// one, dlr its step size; weight decay coupled or decoupled by `decouple`.
struct ProdigyParams {
    double d, dlr, weight_decay, decouple, d_new, beta1, beta2, eps, grad_scale;
    double stochastic_rounding, sr_key;
    static constexpr std::array<const char*, 11> fields{
        "d", "dlr", "weight_decay", "decouple", "d_new", "beta1", "beta2", "eps", "grad_scale",
        "stochastic_rounding", "sr_key"};
};

// Prodigy's reduction pass over every slice_p-th element (slice_p an integer).
struct ProdigyReduceParams {
    double d, dlr, weight_decay, decouple, d0, beta3, safeguard_warmup, slice_p, grad_scale;
    double stochastic_rounding, sr_key;  // unused: the pass writes no param
    static constexpr std::array<const char*, 11> fields{
        "d", "dlr", "weight_decay", "decouple", "d0", "beta3", "safeguard_warmup", "slice_p",
        "grad_scale", "stochastic_rounding", "sr_key"};
};

// The rest of torch.optim's adaptive family (lrfast/reference_adaptive.py).
// Each kernel takes torch's per-step scalars, computed on the host in double.

// NAdam: grad_coef = -lr * (1 - mu) / (1 - mu_product) and avg_coef =
// -lr * mu_next / (1 - mu_product * mu_next), mu_product including this step's mu.
struct NadamParams {
    double lr, beta1, beta2, eps, weight_decay, grad_scale, decoupled;
    double bias_correction2;  // 1 - beta2^step
    double grad_coef, avg_coef;
    double stochastic_rounding, sr_key;
    static constexpr std::array<const char*, 12> fields{
        "lr", "beta1", "beta2", "eps", "weight_decay", "grad_scale", "decoupled",
        "bias_correction2", "grad_coef", "avg_coef", "stochastic_rounding", "sr_key"};
};

// RAdam: rectified (rho_t > 5) selects the adaptive update, scaled by rect.
struct RadamParams {
    double lr, beta1, beta2, eps, weight_decay, grad_scale, decoupled;
    double bias_correction1, bias_correction2_sqrt;  // 1 - beta1^step, sqrt(1 - beta2^step)
    double rectified, rect;
    double stochastic_rounding, sr_key;
    static constexpr std::array<const char*, 13> fields{
        "lr", "beta1", "beta2", "eps", "weight_decay", "grad_scale", "decoupled",
        "bias_correction1", "bias_correction2_sqrt", "rectified", "rect",
        "stochastic_rounding", "sr_key"};
};

// Adamax: clr = lr / (1 - beta1^step).
struct AdamaxParams {
    double clr, beta1, beta2, eps, weight_decay, grad_scale;
    double stochastic_rounding, sr_key;
    static constexpr std::array<const char*, 8> fields{
        "clr", "beta1", "beta2", "eps", "weight_decay", "grad_scale", "stochastic_rounding",
        "sr_key"};
};

// Adafactor (cpp/kernels/adafactor.cpp, outside optimizers.def: its passes
// reduce): beta2_weight = step^beta2_decay (torch's 1 - beta2_t), rho =
// min(lr, 1 / sqrt(step)); eps1 < 0 stands for torch's None (each param's
// dtype's machine epsilon).
struct AdafactorParams {
    double lr, rho, beta2_weight, eps1, eps2, d, weight_decay, grad_scale;
    double stochastic_rounding, sr_key;
    static constexpr std::array<const char*, 10> fields{
        "lr", "rho", "beta2_weight", "eps1", "eps2", "d", "weight_decay", "grad_scale",
        "stochastic_rounding", "sr_key"};
};

}  // namespace lrfast

// The Python module lrfast._core: turns Python sequences of arrays into raw
// pointers, validates everything before any write, releases the GIL and runs
// the drivers. The only file that includes pybind11.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "adafactor_driver.hpp"
#include "driver.hpp"
#include "lrfast/dispatch.hpp"
#include "lrfast/hparams.hpp"
#include "lrfast/q8_tables.hpp"
#include "parallel.hpp"

namespace py = pybind11;

namespace lrfast {
namespace {

// Slots of the arrays of one call: params, grads, then up to three states.
constexpr int kParams = 0, kGrads = 1;

// The arrays of one call, split by how each tensor's arrays store their
// numbers: all float32 and all float64 run the plain kernels; any other mix
// (16-bit arrays, float32 or bfloat16 states of a float64 param) runs the
// tiled kernels, in float (mixed32) or, for float64 params, in double
// (mixed64). For a norm or a clip, 16-bit gradients go to mixed32. `keep`
// holds until the call ends what owns the memory: a tuple of each sequence's
// items, and the NumPy views made of buffer-protocol objects and torch tensors.
struct Collected {
    Batch<float> f32;
    Batch<double> f64;
    MixedBatch<float> mixed32;
    MixedBatch<double> mixed64;
    std::vector<py::object> keep;
    // Where each tensor went, in call order: its batch (f32, f64, mixed32,
    // mixed64) and its index there.
    std::vector<std::pair<int, std::size_t>> order;
};

bool is_16bit(Storage s) { return s == Storage::bf16 || s == Storage::f16; }

int storage_bytes(Storage s) {
    return s == Storage::f64 ? 8 : s == Storage::f32 ? 4 : is_16bit(s) ? 2 : 0;
}

const char* storage_name(Storage s) {
    switch (s) {
        case Storage::f32: return "float32";
        case Storage::f64: return "float64";
        case Storage::bf16: return "bfloat16";
        case Storage::f16: return "float16";
        case Storage::none: break;
    }
    return "none";
}

// The dtypes a state of a `param` param may have: float32, the param's own,
// bfloat16 or a q8 or q4 state (float64 only with float64 params).
const char* state_dtypes(Storage param) {
    switch (param) {
        case Storage::f64: return "float64, float32 or bfloat16 (or a q8 or q4 state)";
        case Storage::f16: return "float16, float32 or bfloat16 (or a q8 or q4 state)";
        default: return "float32 or bfloat16 (or a q8 or q4 state)";
    }
}

constexpr int kNpyHalf = 23;      // NPY_HALF, NumPy's float16 (pybind11 has no name for it)
constexpr int kNpyUserDef = 256;  // NPY_USERDEF: type numbers from here on are registered by extensions

// The type number of ml_dtypes.bfloat16 in this process, or -1 without
// ml_dtypes. Looked up once, when the first array of a registered dtype
// arrives (only then could ml_dtypes be in use): never imported before.
int bfloat16_type_num() {
    static int num = -1;  // guarded by the GIL
    static bool looked = false;
    if (!looked) {
        try {
            num = py::module_::import("numpy")
                      .attr("dtype")(py::module_::import("ml_dtypes").attr("bfloat16"))
                      .attr("num")
                      .cast<int>();
        } catch (py::error_already_set&) {  // no ml_dtypes: then no bfloat16 array either
        }
        looked = true;
    }
    return num;
}

// How an array of this dtype stores its numbers; none for a dtype the kernels lack.
Storage storage_of(const py::detail::PyArrayDescr_Proxy* descr) {
    const auto& npy = py::detail::npy_api::get();
    const int num = descr->type_num;
    if (num == npy.NPY_FLOAT_) return Storage::f32;
    if (num == npy.NPY_DOUBLE_) return Storage::f64;
    if (num == kNpyHalf) return Storage::f16;
    if (num >= kNpyUserDef && num == bfloat16_type_num()) return Storage::bf16;
    return Storage::none;
}

// A RuntimeWarning; where warnings are errors, the exception propagates.
void warn(const std::string& message) {
    if (PyErr_WarnEx(PyExc_RuntimeWarning, message.c_str(), 1) < 0) throw py::error_already_set();
}

// Runs `kernels` without the GIL, then warns if a thread pool started then
// with fewer threads than asked for (warning needs the GIL).
template <class F>
void without_gil(F&& kernels) {
    {
        py::gil_scoped_release release;
        kernels();
    }
    const std::string shortfall = take_pool_warning();
    if (!shortfall.empty()) warn(shortfall);
}

std::string where(const py::tuple& names, int i, std::size_t t) {
    return py::str(names[i]).cast<std::string>() + "[" + std::to_string(t) + "]";
}

// An array's dtype and shape as Python prints them, for messages.
std::string dtype_of(const py::detail::PyArray_Proxy* a) {
    return py::str(reinterpret_cast<PyObject*>(a->descr)).cast<std::string>();
}

std::string shape_of(int nd, const Py_intptr_t* dims) {
    std::string s = "(";
    for (int d = 0; d < nd; ++d) s += (d ? ", " : "") + std::to_string(dims[d]);
    return s + (nd == 1 ? ",)" : ")");
}

std::string shape_of(const py::detail::PyArray_Proxy* a) { return shape_of(a->nd, a->dimensions); }

// The shape the states of tensor t must have: its param's (slice_p == 0), or
// for Prodigy's reduction the 1-D slice param.ravel()[::slice_p].
struct StateShape {
    int nd;
    const Py_intptr_t* dims;
    std::int64_t size;
    std::int64_t slice_p;

    bool matches(const py::detail::PyArray_Proxy* a) const {
        return a->nd == nd && std::equal(a->dimensions, a->dimensions + nd, dims);
    }
    // What has this shape, for messages.
    std::string owner(const py::tuple& names, std::size_t t) const {
        const std::string param = where(names, 0, t);
        if (slice_p == 0) return param;
        return "the slice " + param + ".ravel()[::" + std::to_string(slice_p) + "]";
    }
};

// torch's objects that the host path reads, looked up once torch is imported
// (an object can be a torch tensor only then) and kept for the process's life.
struct TorchTypes {
    PyObject *tensor = nullptr, *parameter = nullptr, *strided = nullptr;
    PyObject* dtypes[4] = {};  // float32, float64, float16, bfloat16
};

const TorchTypes* torch_types() {
    static TorchTypes types;  // guarded by the GIL
    if (types.tensor == nullptr) {
        PyObject* torch = PyDict_GetItemString(PyImport_GetModuleDict(), "torch");  // borrowed
        if (torch == nullptr) return nullptr;
        const py::module_ t = py::reinterpret_borrow<py::module_>(torch);
        if (!py::hasattr(t, "Tensor") || !py::hasattr(t, "nn")) return nullptr;  // mid-import
        const char* names[4] = {"float32", "float64", "float16", "bfloat16"};
        auto keep = [](py::object o) { return o.release().ptr(); };
        for (int k = 0; k < 4; ++k) types.dtypes[k] = keep(t.attr(names[k]));
        types.strided = keep(t.attr("strided"));
        types.parameter = keep(t.attr("nn").attr("Parameter"));
        types.tensor = keep(t.attr("Tensor"));
    }
    return &types;
}

bool is_torch_tensor(const py::handle& obj) {
    const TorchTypes* torch = torch_types();
    return torch != nullptr && PyObject_IsInstance(obj.ptr(), torch->tensor) == 1;
}

// A CPU torch tensor (a plain Tensor or Parameter) as a NumPy view of its
// memory, built from its data pointer, shape and strides: ~10x cheaper than
// torch's .detach().numpy(), which refuses the same tensors (negative or
// conjugate bit, not strided). A bfloat16 tensor is viewed as int16 and
// `forced` says bfloat16. Other dtypes give None (the caller's message).
py::object torch_view(py::handle obj, const std::string& name, Storage& forced) {
    const TorchTypes& torch = *torch_types();
    if (obj.attr("layout").ptr() != torch.strided || obj.attr("is_neg")().cast<bool>() ||
        obj.attr("is_conj")().cast<bool>())
        throw py::type_error(name + " is a torch tensor that is not a plain strided one "
                             "(sparse, or with its negative or conjugate bit set); resolve it "
                             "first");
    const PyObject* dtype = obj.attr("dtype").ptr();
    int k = 0;
    while (k < 4 && dtype != torch.dtypes[k]) ++k;
    if (k == 4) return py::none();
    if (k == 3) forced = Storage::bf16;
    // by type number: a dtype made from a name parses it in Python (~5 us)
    constexpr int kNpyHalf = 23;
    const py::dtype dt = k == 0   ? py::dtype::of<float>()
                         : k == 1 ? py::dtype::of<double>()
                         : k == 2 ? py::dtype(kNpyHalf)
                                  : py::dtype::of<std::int16_t>();
    std::vector<py::ssize_t> shape, strides;
    for (const py::handle n : obj.attr("shape")) shape.push_back(n.cast<py::ssize_t>());
    for (const py::handle n : obj.attr("stride")().cast<py::tuple>())
        strides.push_back(n.cast<py::ssize_t>() * dt.itemsize());
    void* data = PyLong_AsVoidPtr(obj.attr("data_ptr")().ptr());
    if (data == nullptr && PyErr_Occurred()) throw py::error_already_set();
    return py::array(dt, shape, strides, data, obj);
}

// A NumPy view of `obj` that shares its memory: an ndarray itself, a view of a
// buffer or an __array_interface__ exporter, or a CPU torch tensor's memory.
// Anything that could only be converted by copying is refused: the update
// would land in the copy.
py::array as_array(py::handle obj, const py::tuple& names, int i, std::size_t t,
                   std::vector<py::object>& keep, Storage& forced) {
    if (py::isinstance<py::array>(obj)) return py::reinterpret_borrow<py::array>(obj);
    const std::string name = where(names, i, t);
    const std::string mixed = name + " is a CUDA device array, but the first params array is "
                              "on the host: one call takes arrays on one device";
    py::object view;
    // a torch tensor first: its __cuda_array_interface__ raises on the CPU, at ~5 us a tensor
    if (is_torch_tensor(obj)) {
        const std::string device = py::str(obj.attr("device").attr("type"));
        if (device == "cuda") throw py::type_error(mixed);
        if (device != "cpu")
            throw py::type_error(name + " is a torch tensor on " +
                                 py::str(obj.attr("device")).cast<std::string>() +
                                 "; the C++ path takes CPU tensors");
        const TorchTypes& torch = *torch_types();
        if (Py_TYPE(obj.ptr()) == reinterpret_cast<PyTypeObject*>(torch.tensor) ||
            Py_TYPE(obj.ptr()) == reinterpret_cast<PyTypeObject*>(torch.parameter)) {
            view = torch_view(obj, name, forced);
        } else {
            try {  // a subclass: torch says whether it has memory of its own
                view = obj.attr("detach")().attr("numpy")();
            } catch (py::error_already_set& e) {
                throw py::type_error(name + ": " + e.what());
            }
        }
        if (view.is_none())
            throw py::type_error(name + " must be a float32, float64, bfloat16 or float16 "
                                 "tensor, got " + py::str(obj.attr("dtype")).cast<std::string>());
    } else if (py::hasattr(obj, "__cuda_array_interface__")) {
        throw py::type_error(mixed);
    } else if (PyObject_CheckBuffer(obj.ptr()) || py::hasattr(obj, "__array_interface__")) {
        view = py::module_::import("numpy").attr("asarray")(obj);
    } else {
        throw py::type_error(name + " must be a float32, float64, bfloat16 or float16 array "
                             "(NumPy array, buffer or CPU torch tensor), got " +
                             py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    }
    keep.push_back(view);
    return py::reinterpret_borrow<py::array>(view);
}

// 8 for an lrfast.precision.Q8State, 4 for a Q4State, else 0. The classes
// are looked up when the first non-array state arrives.
int low_bit_state(py::handle obj) {
    static PyObject* classes[2] = {nullptr, nullptr};  // guarded by the GIL; kept for the process's life
    if (classes[0] == nullptr) {
        py::module_ precision = py::module_::import("lrfast.precision");
        classes[0] = py::object(precision.attr("Q8State")).release().ptr();
        classes[1] = py::object(precision.attr("Q4State")).release().ptr();
    }
    if (PyObject_IsInstance(obj.ptr(), classes[0]) == 1) return 8;
    return PyObject_IsInstance(obj.ptr(), classes[1]) == 1 ? 4 : 0;
}

// The slots whose values can be negative: an unsigned q8 state is refused there.
bool signed_slot(const std::string& name) {
    return name == "momentum_buffers" || name == "exp_avgs" || name == "grad_avgs" ||
           name == "zs" || name == "ss" || name == "p0s";
}

// The slot that holds weights, schedule-free's z (lrfast.precision.WEIGHT_STATES):
// an update moves it by far less than a q8 or q4 code, or half a bfloat16 ulp
// of a float32 weight, so it must hold its param's values.
bool weight_slot(const py::handle& name) { return py::str(name).equal(py::str("zs")); }

// Whether `state` holds every value of a `param` param (lrfast.precision.holds_param).
bool holds_param(Storage state, Storage param) {
    return state == param || state == Storage::f64 || (state == Storage::f32 && is_16bit(param));
}

// The error for a weight state `label`, which `what` (is a q8 state, has dtype
// bfloat16), that cannot hold the values of params[t], of `param`.
py::value_error narrow_weights(const std::string& label, const std::string& what,
                               const py::tuple& names, std::size_t t, Storage param) {
    return py::value_error(label + " " + what + ", which cannot hold the values of " +
                           where(names, 0, t) + " (" + storage_name(param) +
                           "): z holds the weights, so it must be " + storage_name(param) +
                           (is_16bit(param) ? " or float32" : ""));
}

// A byte range one array of a call covers, for the overlap check.
struct Span {
    std::uintptr_t lo, hi;
    int arg;
    std::size_t t;
};

// Checks a Q8State (bits 8) or Q4State (bits 4) given for state `label` of
// shape `shape` (its codes and absmax as for any state array) and returns its
// operand. Its arrays join `spans` and `keep`.
Operand low_bit_operand(py::handle state, int bits, const std::string& label,
                        const std::string& slot_name, const StateShape& shape,
                        const py::tuple& names, int arg, std::size_t t,
                        std::vector<Span>& spans, std::vector<py::object>& keep) {
    const std::int64_t size = shape.size;
    const auto& npy = py::detail::npy_api::get();
    const std::string kind = bits == 8 ? "q8" : "q4";
    const bool is_signed = py::reinterpret_borrow<py::object>(state.attr("signed")).cast<bool>();
    if (!is_signed && signed_slot(slot_name))
        throw py::value_error(label + ": an unsigned " + kind + " state cannot hold values that "
                              "can be negative; make it with zeros_state(param, '" + kind +
                              "', signed=True)");
    if (bits == 4) {  // its codes are flat: the shape it was made for is an attribute
        const py::tuple got = py::tuple(state.attr("shape"));
        bool same = int(got.size()) == shape.nd;
        for (int d = 0; same && d < shape.nd; ++d)
            same = got[std::size_t(d)].cast<std::int64_t>() == std::int64_t(shape.dims[d]);
        if (!same)
            throw py::value_error(label + " has shape " + py::str(got).cast<std::string>() +
                                  " but " + shape.owner(names, t) + " has shape " +
                                  shape_of(shape.nd, shape.dims));
    }
    const std::int64_t block = bits == 8 ? kQ8Block : kQ4Block;
    const std::int64_t blocks = (size + block - 1) / block;
    const std::int64_t code_bytes = bits == 8 ? size : (size + 1) / 2;
    void* data[2];
    const char* fields[2] = {"codes", "absmax"};
    for (int f = 0; f < 2; ++f) {
        py::object array = state.attr(fields[f]);
        keep.push_back(array);  // held even if the state's attribute is rebound meanwhile
        const std::string name = label + "." + fields[f];
        if (!npy.PyArray_Check_(array.ptr()))
            throw py::type_error(name + " must be a NumPy array, got " +
                                 py::str(py::type::of(array).attr("__name__")).cast<std::string>());
        const auto* a = py::detail::array_proxy(array.ptr());
        const auto* descr = py::detail::array_descriptor_proxy(a->descr);
        const int want = f == 0 ? npy.NPY_UBYTE_ : npy.NPY_FLOAT_;
        if (descr->type_num != want || (descr->byteorder != '=' && descr->byteorder != '|'))
            throw py::type_error(name + " has dtype " + dtype_of(a) + "; expected " +
                                 (f == 0 ? "uint8" : "float32"));
        if (f == 0 && bits == 8 && !shape.matches(a))
            throw py::value_error(name + " has shape " + shape_of(a) + " but " +
                                  shape.owner(names, t) + " has shape " +
                                  shape_of(shape.nd, shape.dims));
        if (f == 0 && bits == 4 && (a->nd != 1 || a->dimensions[0] != code_bytes))
            throw py::value_error(name + " has shape " + shape_of(a) + "; expected (" +
                                  std::to_string(code_bytes) + ",): two codes a byte for the " +
                                  std::to_string(size) + " elements of " + shape.owner(names, t) +
                                  " (shape " + shape_of(shape.nd, shape.dims) + ")");
        if (f == 1 && (a->nd != 1 || a->dimensions[0] != blocks))
            throw py::value_error(name + " has shape " + shape_of(a) + "; expected (" +
                                  std::to_string(blocks) + ",): one value per block of " +
                                  std::to_string(block) + " elements");
        if (!(a->flags & npy.NPY_ARRAY_C_CONTIGUOUS_))
            throw py::value_error(name + " is not C-contiguous");
        if (!(a->flags & npy.NPY_ARRAY_WRITEABLE_)) throw py::value_error(name + " is read-only");
        const std::uintptr_t lo = reinterpret_cast<std::uintptr_t>(a->data);
        const std::int64_t bytes = f == 0 ? code_bytes : blocks * 4;
        if (bytes > 0) spans.push_back({lo, lo + std::uintptr_t(bytes), arg, t});
        data[f] = a->data;
    }
    const Storage storage = bits == 8 ? (is_signed ? Storage::q8_signed : Storage::q8_unsigned)
                                      : (is_signed ? Storage::q4_signed : Storage::q4_unsigned);
    return Operand{data[0], storage, static_cast<float*>(data[1])};
}

// Overlapping arrays would be read after another array's write: refuse
// them, except two gradients (slot kGrads, argument kGrads - first_slot),
// which are only read unless grads_writeable. After sorting by start, an
// array overlaps an earlier one iff it starts before the furthest end seen so
// far, among all arrays if it is written, among written ones if not.
void refuse_overlaps(std::vector<Span>& spans, const py::tuple& names, int first_slot,
                     bool grads_writeable) {
    std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.lo < b.lo; });
    const Span* furthest = nullptr;          // furthest end of any array
    const Span* furthest_written = nullptr;  // furthest end of a written array
    for (const Span& s : spans) {
        const bool written = first_slot + s.arg != kGrads || grads_writeable;
        const Span* other = written ? furthest : furthest_written;
        if (other != nullptr && s.lo < other->hi)
            throw py::value_error(where(names, other->arg, other->t) + " and " +
                                  where(names, s.arg, s.t) +
                                  " overlap in memory (the same array passed twice?)");
        if (furthest == nullptr || s.hi > furthest->hi) furthest = &s;
        if (written && (furthest_written == nullptr || s.hi > furthest_written->hi))
            furthest_written = &s;
    }
}

// Checks every array of one call and gathers the pointers. `arrays` holds one
// sequence (or None for an unused state, or for the grads of a pass that
// takes none) per slot starting at `first_slot`. Without `sixteen_bit`,
// bfloat16 and float16 arrays are refused (back ends that lack them). With
// `slice_p` >= 1 (Prodigy's reduction) the states are 1-D, of the length of
// param.ravel()[::slice_p], and the call's element space is the slices'.
// Throws TypeError/ValueError naming the argument and index; writes nothing.
Collected collect(const py::tuple& arrays, const py::tuple& names, int first_slot,
                  bool grads_writeable, bool sixteen_bit = true, std::int64_t slice_p = 0) {
    const int n_args = int(arrays.size());
    Collected out;
    std::vector<py::object> seqs(static_cast<std::size_t>(n_args), py::object(py::none()));
    std::size_t n = 0;
    for (int i = 0; i < n_args; ++i) {
        if (arrays[i].is_none()) continue;
        // A tuple of the items as they are now, taken before any Python code
        // runs: the checks below call __array_interface__ properties, other
        // threads run while the kernels hold no GIL, and either may edit a
        // list. The tuple's references keep every array alive until the end.
        seqs[i] = py::reinterpret_steal<py::object>(
            PySequence_Fast(arrays[i].ptr(), "expected a sequence of arrays"));
        if (seqs[i] && PyList_Check(seqs[i].ptr()))
            seqs[i] = py::reinterpret_steal<py::object>(PyList_AsTuple(seqs[i].ptr()));
        if (!seqs[i]) throw py::error_already_set();
        out.keep.push_back(seqs[i]);
        const std::size_t len = std::size_t(PyTuple_GET_SIZE(seqs[i].ptr()));
        if (i == 0) n = len;
        else if (len != n)
            throw py::value_error("len(" + py::str(names[i]).cast<std::string>() + ") = " +
                                  std::to_string(len) + " does not match len(" +
                                  py::str(names[0]).cast<std::string>() + ") = " +
                                  std::to_string(n));
    }

    std::vector<Span> spans;
    spans.reserve(n * std::size_t(n_args));
    const auto& npy = py::detail::npy_api::get();
    std::vector<bool> weights(static_cast<std::size_t>(n_args));
    for (int i = 0; i < n_args; ++i) weights[std::size_t(i)] = weight_slot(names[i]);

    // The NumPy fields are read through pybind11's proxies rather than
    // py::array calls: this loop runs for every array of every call, and a
    // thousand-tensor step must not spend microseconds here.
    //
    // With caches cold (another step ran since the last call), each array
    // costs a miss on its NumPy object and then one on its shape, one array
    // after the other. Ask for the objects of the tensor kAhead on and for the
    // shapes of the one kAhead / 2 on (whose objects were asked for earlier).
    constexpr std::size_t kAhead = 32;
    auto prefetch_ahead = [&](std::size_t t) {
        for (int i = 0; i < n_args; ++i) {
            if (seqs[i].is_none()) continue;
            if (t + kAhead < n) __builtin_prefetch(PyTuple_GET_ITEM(seqs[i].ptr(), t + kAhead));
            if (t + kAhead / 2 >= n) continue;
            PyObject* half = PyTuple_GET_ITEM(seqs[i].ptr(), t + kAhead / 2);
            if (npy.PyArray_Check_(half)) __builtin_prefetch(py::detail::array_proxy(half)->dimensions);
        }
    };
    std::int64_t position = 0;  // of tensor t's first element in the call
    for (std::size_t t = 0; t < n; ++t) {
        prefetch_ahead(t);
        const py::detail::PyArray_Proxy* first = nullptr;
        Storage param = Storage::none;
        MixedTensor x{};
        bool low_bit = false;
        StateShape state_shape{0, nullptr, 0, 0};
        Py_intptr_t slice_length = 0;
        for (int i = 0; i < n_args; ++i) {
            if (seqs[i].is_none()) continue;
            const int slot = first_slot + i;
            PyObject* item = PyTuple_GET_ITEM(seqs[i].ptr(), t);
            auto label = [&] { return where(names, i, t); };  // for messages only
            const int bits = slot > kGrads && first != nullptr && !npy.PyArray_Check_(item)
                                 ? low_bit_state(item) : 0;
            if (bits != 0) {
                if (!sixteen_bit)
                    throw py::type_error(label() + " is a q" + std::to_string(bits) +
                                         " state; expected a float32 or float64 array");
                if (weights[std::size_t(i)])
                    throw narrow_weights(label(), "is a q" + std::to_string(bits) + " state",
                                         names, t, param);
                x.x[slot] = low_bit_operand(item, bits, label(),
                                            py::str(names[i]).cast<std::string>(), state_shape,
                                            names, i, t, spans, out.keep);
                low_bit = true;
                continue;
            }
            Storage forced = Storage::none;
            if (!npy.PyArray_Check_(item))
                item = as_array(item, names, i, t, out.keep, forced).ptr();
            const auto* a = py::detail::array_proxy(item);
            const auto* descr = py::detail::array_descriptor_proxy(a->descr);
            const Storage storage = forced != Storage::none ? forced : storage_of(descr);
            auto dtype = [&] { return forced != Storage::none ? storage_name(forced) : dtype_of(a); };
            if (storage == Storage::none || (!sixteen_bit && is_16bit(storage)))
                throw py::type_error(label() + " has dtype " + dtype() + "; expected " +
                                     (sixteen_bit ? "float32, float64, bfloat16 or float16"
                                                  : "float32 or float64"));
            if (descr->byteorder != '=' && descr->byteorder != '|')
                throw py::type_error(label() + " has non-native byte order");
            std::int64_t size = 1;
            for (int d = 0; d < a->nd; ++d) size *= a->dimensions[d];
            if (first == nullptr) {
                first = a;
                state_shape = {a->nd, a->dimensions, size, 0};
                if (slice_p > 0) {
                    slice_length = (size + slice_p - 1) / slice_p;
                    state_shape = {1, &slice_length, slice_length, slice_p};
                }
            } else {
                // Grads have the param's shape; states state_shape.
                const StateShape param_shape{first->nd, first->dimensions, 0, 0};
                const StateShape& want = slot > kGrads ? state_shape : param_shape;
                if (!want.matches(a))
                    throw py::value_error(label() + " has shape " + shape_of(a) + " but " +
                                          want.owner(names, t) + " has shape " +
                                          shape_of(want.nd, want.dims));
            }
            // A grad has its param's dtype, or float32 for a 16-bit param; a
            // state float32, the param's dtype or bfloat16.
            if (slot == kParams) {
                param = storage;
            } else if (slot == kGrads && param != Storage::none && storage != param &&
                       !(storage == Storage::f32 && is_16bit(param))) {
                throw py::type_error(
                    label() + " has dtype " + dtype() + " but " + where(names, 0, t) + " has " +
                    storage_name(param) +
                    (is_16bit(param) ? " (a grad has its param's dtype, or float32)"
                                     : " (no implicit conversion)"));
            } else if (slot > kGrads && weights[std::size_t(i)] && !holds_param(storage, param)) {
                throw narrow_weights(label(), "has dtype " + std::string(dtype()), names, t, param);
            } else if (slot > kGrads && storage != param && storage != Storage::f32 &&
                       storage != Storage::bf16) {
                throw py::type_error(label() + " has dtype " + dtype() + "; a state of a " +
                                     storage_name(param) + " param (" + where(names, 0, t) +
                                     ") is " + state_dtypes(param));
            }
            if (!(a->flags & npy.NPY_ARRAY_C_CONTIGUOUS_))
                throw py::value_error(label() + " is not C-contiguous");
            if ((slot != kGrads || grads_writeable) && !(a->flags & npy.NPY_ARRAY_WRITEABLE_))
                throw py::value_error(label() + " is read-only");
            const std::uintptr_t lo = reinterpret_cast<std::uintptr_t>(a->data);
            const std::uintptr_t bytes = std::uintptr_t(size) * std::uintptr_t(storage_bytes(storage));
            if (size > 0) spans.push_back({lo, lo + bytes, i, t});
            x.x[slot] = Operand{a->data, storage, nullptr};
        }
        x.size = state_shape.size;  // the param's, or its slice's
        x.position = position;
        position += x.size;

        // All float32 or all float64: the plain kernels; any other mix: tiles.
        bool all_f32 = true, all_f64 = true;
        for (const Operand& o : x.x) {
            all_f32 = all_f32 && (o.data == nullptr || o.storage == Storage::f32);
            all_f64 = all_f64 && (o.data == nullptr || o.storage == Storage::f64);
        }
        auto push = [&](auto& batch) {
            using T = std::remove_pointer_t<typename std::decay_t<decltype(batch.params)>::value_type>;
            if (first_slot == kParams) batch.params.push_back(static_cast<T*>(x.x[kParams].data));
            batch.grads.push_back(static_cast<const T*>(x.x[kGrads].data));
            for (int k = 0; k < 3; ++k)
                if (x.x[kGrads + 1 + k].data != nullptr)
                    batch.states[k].push_back(static_cast<T*>(x.x[kGrads + 1 + k].data));
            batch.offsets.push_back(batch.offsets.back() + x.size);
        };
        auto push_mixed = [&](auto& batch) { batch.push(x, low_bit); };
        if (all_f32) {
            out.order.emplace_back(0, out.f32.grads.size());
            push(out.f32);
        } else if (all_f64) {
            out.order.emplace_back(1, out.f64.grads.size());
            push(out.f64);
        } else if (param == Storage::f64) {
            out.order.emplace_back(3, out.mixed64.tensors.size());
            push_mixed(out.mixed64);
        } else {
            out.order.emplace_back(2, out.mixed32.tensors.size());
            push_mixed(out.mixed32);
        }
    }

    refuse_overlaps(spans, names, first_slot, grads_writeable);
    return out;
}

template <class P>
P params_from(const py::dict& hp) {
    constexpr std::size_t n = P::fields.size();
    static_assert(sizeof(P) == n * sizeof(double), "Params structs hold doubles only");
    if (py::len(hp) != n)
        throw std::logic_error("internal: hyperparameter dict does not match the C++ struct");
    double values[n];
    for (std::size_t i = 0; i < n; ++i) values[i] = hp[P::fields[i]].template cast<double>();
    P p;
    std::memcpy(&p, values, sizeof p);
    return p;
}

// One optimizer's kernels in each part of the kernel table.
template <class P>
struct UpdateKernels {
    UpdateFn<P, float> TypedKernels<float>::*f32;
    UpdateFn<P, double> TypedKernels<double>::*f64;
    MixedFn<P> MixedKernels<float>::*mixed32;
    MixedFn<P> MixedKernels<double>::*mixed64;
};

template <class P>
void run_collected(UpdateKernels<P> fn, const py::dict& hp, const Collected& c) {
    const P params = params_from<P>(hp);
    without_gil([&] {
        const KernelTable& k = kernels();
        if (!c.f32.params.empty()) run_update(k.f32.*fn.f32, params, c.f32);
        if (!c.f64.params.empty()) run_update(k.f64.*fn.f64, params, c.f64);
        if (!c.mixed32.tensors.empty()) run_update(k.mixed32.*fn.mixed32, params, c.mixed32);
        if (!c.mixed64.tensors.empty()) run_update(k.mixed64.*fn.mixed64, params, c.mixed64);
    });
}

template <class P>
void update(UpdateKernels<P> fn, const py::tuple& arrays, const py::tuple& names,
            const py::dict& hp) {
    params_from<P>(hp);  // checks the dict before the arrays, as run_collected would
    run_collected(fn, hp, collect(arrays, names, kParams, false));
}

using Runner = void (*)(const py::dict& hp, const Collected& c);

// The update kernels by name (optimizers.def), for prepared calls.
Runner runner_of(const std::string& kernel) {
#define LRFAST_OPTIMIZER(name, P, nstates)                                                 \
    if (kernel == #name)                                                                   \
        return [](const py::dict& hp, const Collected& c) {                               \
            run_collected<P>({&TypedKernels<float>::name, &TypedKernels<double>::name,      \
                              &MixedKernels<float>::name, &MixedKernels<double>::name},    \
                             hp, c);                                                      \
        };
#include "lrfast/optimizers.def"
#undef LRFAST_OPTIMIZER
    throw py::value_error("no update kernel named '" + kernel + "'");
}

// An update whose params and states were checked and collected once
// (lrfast.torch keeps one per call of a param group while the group stays
// the same): each run takes only the gradients, as the data pointers of
// C-contiguous arrays of their params' dtypes and shapes (the caller checked
// them); a gradient overlapping its own param is refused. Not for concurrent
// runs: the optimizer's lock serialises them.
class Prepared {
   public:
    Prepared(const std::string& kernel, const py::tuple& arrays, const py::tuple& names)
        : run_(runner_of(kernel)) {
        if (arrays.size() < 2 || !arrays[kGrads].is_none())
            throw py::value_error("prepare takes (params, None, states...): the grads come with each run");
        c_ = collect(arrays, names, kParams, false);
        for (const auto& [batch, j] : c_.order) {
            auto span = [](const void* p, std::int64_t n, Storage s) {
                return std::pair{reinterpret_cast<std::uintptr_t>(p),
                                 std::uintptr_t(n) * std::uintptr_t(storage_bytes(s))};
            };
            auto plain = [&, j = j](const auto& b, Storage s) {
                return span(b.params[j], b.offsets[j + 1] - b.offsets[j], s);
            };
            auto mixed = [&](const MixedTensor& x) {
                return span(x.x[kParams].data, x.size, x.x[kParams].storage);
            };
            switch (batch) {
                case 0: params_.push_back(plain(c_.f32, Storage::f32)); break;
                case 1: params_.push_back(plain(c_.f64, Storage::f64)); break;
                case 2: params_.push_back(mixed(c_.mixed32.tensors[j])); break;
                default: params_.push_back(mixed(c_.mixed64.tensors[j])); break;
            }
        }
    }

    void run(const py::dict& hp, const py::list& grads) {
        const std::size_t n = c_.order.size();
        if (std::size_t(PyList_GET_SIZE(grads.ptr())) != n)
            throw py::value_error("got " + std::to_string(PyList_GET_SIZE(grads.ptr())) +
                                  " gradient pointers for " + std::to_string(n) + " tensors");
        for (std::size_t t = 0; t < n; ++t) {
            void* g = PyLong_AsVoidPtr(PyList_GET_ITEM(grads.ptr(), t));
            if (g == nullptr && PyErr_Occurred()) throw py::error_already_set();
            if (!set_grad(t, g))
                throw py::value_error("grads[" + std::to_string(t) + "] overlaps its param");
        }
        run_(hp, c_);
    }

    // lrfast.torch's fast path on the host: take() reads the gradients
    // through the C API, not the interpreter (~0.1 us a check less per
    // tensor), and run_taken() steps with them; the adapter takes every
    // group's grads before it runs any. take(group) needs `group`, a param
    // group's list of params, to hold the objects watched, each param's
    // storage where it was, and at each position the call steps a .grad
    // that is a plain torch.Tensor of the watched dtype and shape,
    // C-contiguous, without a negative bit; the other positions' .grad None.
    // Anything else returns false, and the adapter's slow path, which copies
    // or refuses, says what is wrong.
    void watch(const py::list& group, const py::list& positions, const py::list& dtypes,
               const py::list& shapes, const py::object& tensor_type) {
        if (std::size_t(positions.size()) != c_.order.size())
            throw py::value_error("watch takes one position per tensor of the call");
        auto objects = [](const py::list& items) {
            std::vector<py::object> out;
            for (const py::handle item : items) out.push_back(py::reinterpret_borrow<py::object>(item));
            return out;
        };
        group_ = objects(group);
        dtypes_ = objects(dtypes);
        shapes_ = objects(shapes);
        if (dtypes_.size() != c_.order.size() || shapes_.size() != c_.order.size())
            throw py::value_error("watch takes one dtype and one shape per tensor of the call");
        slot_.assign(group_.size(), -1);
        for (std::size_t t = 0; t < c_.order.size(); ++t)
            slot_.at(positions[t].cast<std::size_t>()) = std::int64_t(t);
        tensor_type_ = tensor_type;
    }

    bool take(const py::list& group) {
        taken_ = take_grads(group);
        if (!taken_) PyErr_Clear();
        return taken_;
    }

    void run_taken(const py::dict& hp) {
        if (!taken_) throw py::value_error("run_taken follows a take that returned True");
        taken_ = false;
        run_(hp, c_);
    }

   private:
    bool set_grad(std::size_t t, void* g) {
        const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(g);
        const auto [lo, bytes] = params_[t];
        if (bytes != 0 && at < lo + bytes && lo < at + bytes) return false;
        const auto [batch, j] = c_.order[t];
        switch (batch) {
            case 0: c_.f32.grads[j] = static_cast<const float*>(g); break;
            case 1: c_.f64.grads[j] = static_cast<const double*>(g); break;
            case 2: grad_operand(c_.mixed32.tensors[j], g); break;
            default: grad_operand(c_.mixed64.tensors[j], g); break;
        }
        return true;
    }

    // A method call's result, owned; null with a Python error set on failure.
    static py::object call(PyObject* self, PyObject* name) {
        PyObject* args[] = {self};
        return py::reinterpret_steal<py::object>(
            PyObject_VectorcallMethod(name, args, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr));
    }

    static void* pointer(PyObject* tensor) {
        static PyObject* const data_ptr = PyUnicode_InternFromString("data_ptr");
        const py::object ptr = call(tensor, data_ptr);
        return ptr ? PyLong_AsVoidPtr(ptr.ptr()) : nullptr;
    }

    bool take_grads(const py::list& group) {
        static PyObject* const grad = PyUnicode_InternFromString("grad");
        static PyObject* const dtype = PyUnicode_InternFromString("dtype");
        static PyObject* const shape = PyUnicode_InternFromString("shape");
        static PyObject* const is_contiguous = PyUnicode_InternFromString("is_contiguous");
        static PyObject* const is_neg = PyUnicode_InternFromString("is_neg");
        if (tensor_type_.is_none() || std::size_t(PyList_GET_SIZE(group.ptr())) != group_.size())
            return false;
        for (std::size_t i = 0; i < group_.size(); ++i) {
            PyObject* p = PyList_GET_ITEM(group.ptr(), i);
            if (p != group_[i].ptr()) return false;
            const auto g = py::reinterpret_steal<py::object>(PyObject_GetAttr(p, grad));
            if (!g) return false;
            const std::int64_t t = slot_[i];
            if (t < 0) {
                if (!g.is_none()) return false;
                continue;
            }
            const auto s = std::size_t(t);
            if (Py_TYPE(g.ptr()) != reinterpret_cast<PyTypeObject*>(tensor_type_.ptr()) ||
                reinterpret_cast<std::uintptr_t>(pointer(p)) != params_[s].first)
                return false;
            const auto d = py::reinterpret_steal<py::object>(PyObject_GetAttr(g.ptr(), dtype));
            const auto sh = py::reinterpret_steal<py::object>(PyObject_GetAttr(g.ptr(), shape));
            if (!d || d.ptr() != dtypes_[s].ptr() || !sh ||
                PyObject_RichCompareBool(sh.ptr(), shapes_[s].ptr(), Py_EQ) != 1)
                return false;
            const py::object contiguous = call(g.ptr(), is_contiguous);
            const py::object negative = call(g.ptr(), is_neg);
            if (contiguous.ptr() != Py_True || negative.ptr() != Py_False) return false;
            void* data = pointer(g.ptr());
            if (data == nullptr || !set_grad(s, data)) return false;
        }
        return true;
    }

    // A mixed tensor's grad has its param's storage (torch's rule for .grad).
    static void grad_operand(MixedTensor& x, void* g) {
        x.x[kGrads] = Operand{g, x.x[kParams].storage, nullptr};
    }

    Runner run_;
    Collected c_;
    std::vector<std::pair<std::uintptr_t, std::uintptr_t>> params_;  // each param's start and bytes
    // what take compares (see watch)
    std::vector<py::object> group_, dtypes_, shapes_;
    std::vector<std::int64_t> slot_;  // the call's tensor at each position of the group; -1: none
    py::object tensor_type_ = py::none();
    bool taken_ = false;
};

// Prodigy's reduction: the sums of each group of tensors present, added in
// this fixed order.
ProdigySums prodigy_sums(const py::tuple& arrays, const py::tuple& names, const py::dict& hp) {
    const ProdigyReduceParams params = params_from<ProdigyReduceParams>(hp);
    Collected c = collect(arrays, names, kParams, false, true, std::int64_t(params.slice_p));
    ProdigySums total{0.0, 0.0};
    without_gil([&] {
        const KernelTable& k = kernels();
        const ProdigySums parts[4] = {
            c.f32.params.empty() ? ProdigySums{} : run_reduce(k.f32.prodigy_reduce, params, c.f32),
            c.f64.params.empty() ? ProdigySums{} : run_reduce(k.f64.prodigy_reduce, params, c.f64),
            c.mixed32.tensors.empty() ? ProdigySums{}
                                      : run_reduce(k.mixed32.prodigy_reduce, params, c.mixed32),
            c.mixed64.tensors.empty() ? ProdigySums{}
                                      : run_reduce(k.mixed64.prodigy_reduce, params, c.mixed64)};
        for (const ProdigySums& part : parts) {
            total.dot += part.dot;
            total.s_abs += part.s_abs;
        }
    });
    return total;
}

NormKind norm_kind(double p) {
    if (std::isinf(p)) return NormKind::linf;
    if (p == 1.0) return NormKind::l1;
    if (p == 2.0) return NormKind::l2;
    return NormKind::lp;
}

// The norm over float32, float64 and 16-bit gradients together: the norms of
// the groups present are combined, in that order, as a p-norm.
double norm_of(const Collected& c, double p) {
    const KernelTable& k = kernels();
    const NormKind kind = norm_kind(p);
    double parts[3];
    int n = 0;
    if (!c.f32.grads.empty())
        parts[n++] = run_norm(c.f32.offsets, kind, p, [&](std::int64_t t, std::int64_t lo, std::int64_t m) {
            return k.f32.norm(c.f32.grads[std::size_t(t)] + lo, m, kind, p);
        });
    if (!c.f64.grads.empty())
        parts[n++] = run_norm(c.f64.offsets, kind, p, [&](std::int64_t t, std::int64_t lo, std::int64_t m) {
            return k.f64.norm(c.f64.grads[std::size_t(t)] + lo, m, kind, p);
        });
    if (!c.mixed32.tensors.empty())
        parts[n++] = run_norm(c.mixed32.offsets, kind, p, [&](std::int64_t t, std::int64_t lo, std::int64_t m) {
            return k.half.norm(c.mixed32.tensors[std::size_t(t)].x[kGrads], lo, m, kind, p);
        });
    if (n == 0) return 0.0;
    double total = parts[0];
    for (int i = 1; i < n; ++i) {
        const double b = parts[i];
        if (std::isnan(total) || std::isnan(b)) return std::nan("");
        switch (kind) {
            case NormKind::linf: total = std::max(total, b); break;
            case NormKind::l1: total = total + b; break;
            case NormKind::l2: total = std::hypot(total, b); break;
            case NormKind::lp: total = std::pow(std::pow(total, p) + std::pow(b, p), 1.0 / p); break;
        }
    }
    return total;
}

template <class T>
void apply_inplace(const Batch<T>& batch, const TypedKernels<T>& k, bool clamp, double arg) {
    const auto kernel = clamp ? k.clamp : k.scale;
    run_inplace(batch.offsets, [&](std::int64_t t, std::int64_t lo, std::int64_t n) {
        kernel(const_cast<T*>(batch.grads[std::size_t(t)]) + lo, n, arg);  // validated writeable
    });
}

void apply_inplace(const Collected& c, bool clamp, double arg) {
    const KernelTable& k = kernels();
    apply_inplace(c.f32, k.f32, clamp, arg);
    apply_inplace(c.f64, k.f64, clamp, arg);
    const auto half = clamp ? k.half.clamp : k.half.scale;
    run_inplace(c.mixed32.offsets, [&](std::int64_t t, std::int64_t lo, std::int64_t n) {
        half(c.mixed32.tensors[std::size_t(t)].x[kGrads], lo, n, arg);
    });
}

py::tuple grads_only(const py::object& grads) { return py::make_tuple(grads); }

// Adafactor over (params, grads, row_vars, col_vars, variances): params and
// grads checked as for any update (float32 or float64), then the states: a
// param of 2 or more dims takes row_vars[t] of its shape with the last dim 1
// and col_vars[t] with the second-to-last 1 (variances[t] None); one of 0 or
// 1 dims variances[t] of its shape (the others None). States have the param's
// dtype, are C-contiguous, writeable and overlap nothing. Writes nothing
// before every check passed; with check_only, runs nothing.
void adafactor(const py::tuple& arrays, const py::tuple& names, const py::dict& hp,
               bool check_only) {
    Collected c = collect(py::make_tuple(arrays[0], arrays[1]),
                          py::make_tuple(names[0], names[1]), kParams, false);
    const AdafactorParams params = params_from<AdafactorParams>(hp);
    std::vector<py::object> seqs;
    for (int i = 0; i < 5; ++i) {
        if (arrays[i].is_none()) {
            seqs.push_back(py::none());
            continue;
        }
        py::object seq = py::reinterpret_steal<py::object>(
            PySequence_Fast(arrays[i].ptr(), "expected a sequence of arrays"));
        if (!seq) throw py::error_already_set();
        c.keep.push_back(seq);
        seqs.push_back(seq);
    }
    const std::size_t n = c.order.size();
    for (int i = 2; i < 5; ++i)
        if (!seqs[std::size_t(i)].is_none() &&
            std::size_t(PySequence_Fast_GET_SIZE(seqs[std::size_t(i)].ptr())) != n)
            throw py::value_error("len(" + py::str(names[i]).cast<std::string>() +
                                  ") does not match len(params) = " + std::to_string(n));
    auto item = [&](int i, std::size_t t) -> py::handle {
        if (seqs[std::size_t(i)].is_none()) return py::none();
        return PySequence_Fast_GET_ITEM(seqs[std::size_t(i)].ptr(), Py_ssize_t(t));
    };
    auto view = [&](int i, std::size_t t) {
        Storage forced = Storage::none;
        return as_array(item(i, t), names, i, t, c.keep, forced);
    };
    std::vector<AdafactorTensor<float>> f32;
    std::vector<AdafactorTensor<double>> f64;
    std::vector<Span> spans;
    for (std::size_t t = 0; t < n; ++t) {
        const py::array p = view(0, t), g = view(1, t);
        // float32 and float64 tensors, or (mixed32) a 16-bit param, its grad 16-bit or float32
        const bool is_f64 = c.order[t].first == 1;
        const MixedTensor* mixed =
            c.order[t].first == 2 ? &c.mixed32.tensors[c.order[t].second] : nullptr;
        const std::int64_t size = std::int64_t(p.size());
        const int nd = int(p.ndim());
        const bool factored = nd >= 2;
        std::vector<Py_intptr_t> dims(p.shape(), p.shape() + nd);
        // The state in slot i, checked against `want` (its shape), or null when absent.
        auto state = [&](int i, const std::vector<Py_intptr_t>& want, bool used) -> void* {
            const std::string label = where(names, i, t);
            if (item(i, t).is_none()) {
                if (used)
                    throw py::value_error(label + " is None, but " + where(names, 0, t) +
                                          " of shape " + shape_of(nd, dims.data()) + " needs it");
                return nullptr;
            }
            if (!used)
                throw py::value_error(label + " must be None: " + where(names, 0, t) + " has " +
                                      std::to_string(nd) + " dims (" +
                                      (factored ? "row_vars and col_vars" : "variances") +
                                      " hold its second moment)");
            const py::array a = view(i, t);
            const auto* proxy = py::detail::array_proxy(a.ptr());
            const Storage want_storage = is_f64 ? Storage::f64 : Storage::f32;
            if (storage_of(py::detail::array_descriptor_proxy(proxy->descr)) != want_storage)
                throw py::type_error(label + " has dtype " + dtype_of(proxy) + "; the states of " +
                                     where(names, 0, t) + " are " + storage_name(want_storage) +
                                     " (Adafactor's: the param's dtype, float32 for a 16-bit one)");
            if (!(proxy->nd == int(want.size()) &&
                  std::equal(want.begin(), want.end(), proxy->dimensions)))
                throw py::value_error(label + " has shape " + shape_of(proxy) + "; " +
                                      where(names, 0, t) + " of shape " +
                                      shape_of(nd, dims.data()) + " takes " +
                                      shape_of(int(want.size()), want.data()));
            if (!(a.flags() & py::array::c_style)) throw py::value_error(label + " is not C-contiguous");
            if (!a.writeable()) throw py::value_error(label + " is read-only");
            const auto lo = reinterpret_cast<std::uintptr_t>(proxy->data);
            if (a.size() > 0) spans.push_back({lo, lo + std::uintptr_t(a.nbytes()), i, t});
            return proxy->data;
        };
        std::vector<Py_intptr_t> row_shape = dims, col_shape = dims;
        if (factored) {
            row_shape[std::size_t(nd - 1)] = 1;
            col_shape[std::size_t(nd - 2)] = 1;
        }
        void* row_var = state(2, row_shape, factored);
        void* col_var = state(3, col_shape, factored);
        void* variance = state(4, dims, !factored);
        for (int i = 0; i < 2; ++i) {
            const py::array a = i == 0 ? p : g;
            const auto lo = reinterpret_cast<std::uintptr_t>(a.data());
            if (a.size() > 0) spans.push_back({lo, lo + std::uintptr_t(a.nbytes()), i, t});
        }
        if (size == 0) continue;  // left as it is
        std::int64_t rows = 0, cols = 0, batch = 0;
        if (factored) {
            rows = dims[std::size_t(nd - 2)];
            cols = dims[std::size_t(nd - 1)];
            batch = size / (rows * cols);
        }
        // torch's eps1 = None: the machine epsilon of the param's dtype
        const Storage param_storage = mixed ? mixed->x[kParams].storage
                                            : (is_f64 ? Storage::f64 : Storage::f32);
        const double machine_eps = param_storage == Storage::bf16  ? 0x1p-7
                                   : param_storage == Storage::f16 ? 0x1p-10
                                   : param_storage == Storage::f64
                                       ? double(std::numeric_limits<double>::epsilon())
                                       : double(std::numeric_limits<float>::epsilon());
        const double eps1 = params.eps1 < 0 ? machine_eps : params.eps1;
        auto push = [&](auto& list) {
            using T = std::remove_pointer_t<decltype(list.front().p)>;
            // a 16-bit array has no T pointer: the driver widens it chunk by chunk
            auto own = [&](int slot, const py::array& a) {
                return mixed && is_16bit(mixed->x[slot].storage)
                           ? nullptr : reinterpret_cast<T*>(py::detail::array_proxy(a.ptr())->data);
            };
            list.push_back({own(kParams, p), own(kGrads, g),
                            mixed ? mixed->x[kParams] : Operand{},
                            mixed ? mixed->x[kGrads] : Operand{},
                            size, factored, batch, rows, cols, static_cast<T*>(row_var),
                            static_cast<T*>(col_var), static_cast<T*>(variance), eps1});
        };
        if (is_f64) push(f64);
        else push(f32);
    }
    // States against each other and against params and grads.
    refuse_overlaps(spans, names, kParams, false);
    if (check_only) return;
    without_gil([&] {
        const KernelTable& k = kernels();
        if (!f32.empty()) run_adafactor(k.f32.adafactor, params, f32);
        if (!f64.empty()) run_adafactor(k.f64.adafactor, params, f64);
    });
}


}  // namespace
}  // namespace lrfast

PYBIND11_MODULE(_core, m) {
    using namespace lrfast;
    m.doc() = "lrfast's C++ kernels; use the functions in lrfast, which validate hyperparameters.";

#define LRFAST_OPTIMIZER(name, P, nstates)                                                   \
    m.def(                                                                                   \
        #name,                                                                               \
        [](const py::tuple& arrays, const py::tuple& names, const py::dict& hp) {            \
            update<P>({&TypedKernels<float>::name, &TypedKernels<double>::name,               \
                       &MixedKernels<float>::name, &MixedKernels<double>::name},             \
                      arrays, names, hp);                                                    \
        },                                                                                   \
        py::arg("arrays"), py::arg("names"), py::arg("hparams"),                             \
        "One fused " #name " step over (params, grads, states...); see lrfast." #name "_step.");
#include "lrfast/optimizers.def"
#undef LRFAST_OPTIMIZER
    // type as its metaclass, not pybind11's, so that a stub describes it
    py::class_<Prepared>(m, "Prepared", py::metaclass(reinterpret_cast<PyObject*>(&PyType_Type)),
                         "An update kernel's params and states, collected once (see prepare).")
        .def("__call__", &Prepared::run, py::arg("hparams"), py::arg("grads"),
             "One step with the grads given as data pointers, one per tensor.")
        .def("watch", &Prepared::watch, py::arg("group"), py::arg("positions"),
             py::arg("dtypes"), py::arg("shapes"), py::arg("tensor_type"),
             "What take compares: a param group's params, the call's\n"
             "tensors' positions in it, their grads' dtypes and shapes, torch.Tensor.")
        .def("take", &Prepared::take, py::arg("group"),
             "Reads the .grad of each param of `group`; False where `group` is not as watched.")
        .def("run_taken", &Prepared::run_taken, py::arg("hparams"),
             "One step with the grads of the last take, which returned True.");
    m.def(
        "prepare",
        [](const std::string& kernel, const py::tuple& arrays, const py::tuple& names) {
            return Prepared(kernel, arrays, names);
        },
        py::arg("kernel"), py::arg("arrays"), py::arg("names"),
        "Collects an update kernel's (params, None, states...) once; returns a\n"
        "Prepared, whose run(hparams, grads) steps with the grads' data pointers.");
    m.def(
        "prodigy_reduce",
        [](const py::tuple& arrays, const py::tuple& names, const py::dict& hp) {
            const ProdigySums sums = prodigy_sums(arrays, names, hp);
            return py::make_tuple(sums.dot, sums.s_abs);
        },
        py::arg("arrays"), py::arg("names"), py::arg("hparams"),
        "Prodigy's reduction pass over (params, grads, ss, p0s): updates s, returns\n"
        "(dot, s_abs); see lrfast.prodigy_reduce.");

    m.def("adafactor", &adafactor, py::arg("arrays"), py::arg("names"), py::arg("hparams"),
          py::arg("check_only") = false,
          "Adafactor's step over (params, grads, row_vars, col_vars, variances); see\n"
          "lrfast.adafactor_step.");
    m.def(
        "global_norm",
        [](const py::object& grads, double p) {
            Collected c = collect(grads_only(grads), py::make_tuple("grads"), kGrads, false);
            double total;
            without_gil([&] { total = norm_of(c, p); });
            return total;
        },
        py::arg("grads"), py::arg("norm_type"));
    m.def(
        "clip_grad_norm",
        [](const py::object& grads, double max_norm, double p, bool error_if_nonfinite) {
            Collected c = collect(grads_only(grads), py::make_tuple("grads"), kGrads, true);
            double total;
            without_gil([&] { total = norm_of(c, p); });
            if (error_if_nonfinite && !std::isfinite(total))
                throw std::runtime_error(
                    "the total norm of order " + std::to_string(p) +
                    " of the gradients is non-finite, so it cannot be clipped; pass "
                    "error_if_nonfinite=False to scale them anyway");
            const double coef = max_norm / (total + 1e-6);
            if (coef < 1.0 || std::isnan(coef))  // x * 1 == x: skip the write
                without_gil([&] { apply_inplace(c, false, coef); });
            return total;
        },
        py::arg("grads"), py::arg("max_norm"), py::arg("norm_type"), py::arg("error_if_nonfinite"));
    m.def(
        "clip_grad_value",
        [](const py::object& grads, double clip_value) {
            Collected c = collect(grads_only(grads), py::make_tuple("grads"), kGrads, true);
            without_gil([&] { apply_inplace(c, true, clip_value); });
        },
        py::arg("grads"), py::arg("clip_value"));

    m.def(
        "stream",
        [](const py::tuple& arrays, const py::tuple& names, bool write) {
            Collected c = collect(arrays, names, kParams, false);
            without_gil([&] {
                const KernelTable& k = kernels();
                if (!c.f32.params.empty()) run_stream(k.f32.stream, c.f32, write);
                if (!c.f64.params.empty()) run_stream(k.f64.stream, c.f64, write);
                if (!c.mixed32.tensors.empty()) run_stream(k.half.stream, c.mixed32, write);
                if (!c.mixed64.tensors.empty()) run_stream(k.half.stream, c.mixed64, write);
            });
        },
        py::arg("arrays"), py::arg("names"), py::arg("write") = true,
        "The bandwidth probe: reads grads, reads and writes back (unchanged) params and\n"
        "every state given, through the same blocks and threads as a step; write=False\n"
        "only reads them (a reduction's pass).");
    m.def(
        "check",
        [](const py::tuple& arrays, const py::tuple& names, bool grads_writeable,
           bool sixteen_bit, std::int64_t slice_p) {
            // A step's arrays start with params; a norm's or clip's are grads alone.
            const bool grads_alone = names.size() == 1 && py::str(names[0]).equal(py::str("grads"));
            if (slice_p < 0) throw py::value_error("slice_p must be >= 0");
            collect(arrays, names, grads_alone ? kGrads : kParams, grads_writeable, sixteen_bit,
                    slice_p);
        },
        py::arg("arrays"), py::arg("names"), py::arg("grads_writeable"),
        py::arg("sixteen_bit") = true, py::arg("slice_p") = 0,
        "Runs the checks of a call without running it (for back ends that hold\n"
        "their arrays elsewhere and pass host views with the same pointers):\n"
        "(params, grads, states...) for a step, or (grads,) for a norm or clip.\n"
        "sixteen_bit=False refuses bfloat16 and float16 arrays. slice_p >= 1: the\n"
        "states are Prodigy's, of the length of param.ravel()[::slice_p].");
    m.def("cpu_isa", [] { return std::string(isa_name(active_isa())); },
          "The instruction set the kernels run with: 'avx512', 'avx2' or 'baseline'.");
    m.def(
        "set_num_threads",
        [](const py::object& n) {
            if (PyBool_Check(n.ptr()) || !PyIndex_Check(n.ptr()))
                throw py::type_error("n must be an int, got " +
                                     py::str(py::type::of(n).attr("__name__")).cast<std::string>());
            const auto index = py::reinterpret_steal<py::object>(PyNumber_Index(n.ptr()));
            if (!index) throw py::error_already_set();
            int overflow = 0;  // -1 or 1 beyond a C long; then `value` is -1
            const long value = PyLong_AsLongAndOverflow(index.ptr(), &overflow);
            if (value == -1 && PyErr_Occurred()) throw py::error_already_set();
            const std::string got =
                overflow != 0 ? "an int beyond the 64-bit range" : std::to_string(value);
            if (overflow < 0 || (overflow == 0 && value < 1))
                throw py::value_error("n must be >= 1, got " + got);
            if (overflow > 0 || value > kMaxThreads)
                throw py::value_error("n must be <= " + std::to_string(kMaxThreads) +
                                      " (lrfast's most threads), got " + got);
            py::gil_scoped_release release;  // waits for a step in flight to finish
            set_num_threads(int(value));
        },
        py::arg("n"),
        ("Threads the kernels use, the calling thread included: an int from 1 to " +
         std::to_string(kMaxThreads) +
         ".\nA thread that cannot start is left out with a RuntimeWarning.")
            .c_str());
    m.def("get_num_threads", &get_num_threads);
    m.attr("BLOCK") = kBlock;

    if (*q8_tables_error() != '\0')
        throw py::import_error(std::string("lrfast._core: ") + q8_tables_error());

    // Environment values that cannot be used as given warn on import.
    const std::string threads_warning = init_num_threads();
    if (!threads_warning.empty()) warn(threads_warning);
    if (const char* cap = std::getenv("LRFAST_CPU_ISA")) {
        const std::string value(cap);
        if (value != "baseline" && value != "avx2" && value != "avx512")
            warn("ignoring LRFAST_CPU_ISA=" + value + " (expected baseline, avx2 or avx512)");
    }
}

// The lookup tables of q8 states (lrfast.precision: block-wise dynamic
// quantization with bitsandbytes' maps) and of q4 states (torchao's maps),
// built once at import from the maps that CMake copies out of
// lrfast/precision.py. Plain data, shared by every ISA's kernels
// (cpp/kernels/q8.hpp, cpp/kernels/q4.hpp).
#pragma once

#include <cstdint>

namespace lrfast {

// Elements per q8 block, counted in C order (lrfast.precision.BLOCK).
constexpr std::int64_t kQ8Block = 256;

// The code of a normalised value n in [-1, 1] is the number of midpoints
// below it (lrfast.precision.quantize_blockwise). The kernels count them from
// the float32 bits of a key k = |n| (see q8.hpp): a cell is named by k's
// exponent and top 7 mantissa bits, and holds at most one midpoint (checked
// when the tables are built), so the count is the cell's count below it plus
// one if k lies above that midpoint, which compares the low 16 bits of both
// (the high bits are the cell's). Keys below kQ8CellFloor = 2^-23, which no
// midpoint is, count as the floor; 1.0 has a cell of its own.
constexpr std::uint32_t kQ8CellFloor = 104u << 23;
constexpr int kQ8CellShift = 16;
constexpr std::uint32_t kQ8One = 0x3f800000u;  // the bits of 1.0f
constexpr int kQ8Cells = int((kQ8One - kQ8CellFloor) >> kQ8CellShift) + 1;
// A cell without a midpoint: no key's low 16 bits exceed it.
constexpr std::uint32_t kQ8NoMidpoint = 0xffffu;

struct Q8Table {
    float map[256];  // the dynamic map: value of each code (times the block's absmax)
    // cell[c] = (midpoints below cell c) << 24 | the low 16 bits of the midpoint
    // inside it (or kQ8NoMidpoint). Only the midpoints >= 0 count: all 255 of
    // the unsigned map, the 128 from code 127 on of the signed one.
    std::uint32_t cell[kQ8Cells];
    // The bits of the signed map's largest midpoint (between its last value
    // below 1 and 1.0), which the negative side has no mirror of.
    std::uint32_t top_midpoint;
};

// q8_tables[1]: the signed map; q8_tables[0]: the unsigned map.
extern const Q8Table q8_tables[2];

// Elements per q4 block (lrfast.precision.Q4_BLOCK): torchao's block size.
constexpr std::int64_t kQ4Block = 128;

// torchao's 4-bit maps (lrfast.precision.create_q4_map). The code of a
// normalised value n is the number of thresholds <= n: threshold[k] is the
// least float32 at which torchao's rounding takes code k + 1 over code k.
struct Q4Table {
    float map[16];
    float threshold[15];
};

// q4_tables[1]: the signed map; q4_tables[0]: the unsigned map.
extern const Q4Table q4_tables[2];

// "" if the tables were built, else why not (a cell holding two midpoints, a
// midpoint below the floor): the module then refuses to import.
const char* q8_tables_error();

}  // namespace lrfast

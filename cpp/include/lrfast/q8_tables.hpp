// The lookup tables of q8 states (lrfast.precision: block-wise dynamic
// quantization with bitsandbytes' maps), built once at import from the maps
// that CMake copies out of lrfast/precision.py. Plain data, shared by every
// ISA's kernels (cpp/kernels/q8.hpp).
#pragma once

#include <cstdint>

namespace lrfast {

// Elements per q8 block, counted in C order (lrfast.precision.BLOCK).
constexpr std::int64_t kQ8Block = 256;

// A normalised value n in [-1, 1] falls in a bucket named by its float32
// bits: the sign, the exponent (values below 2^-31 share the lowest bucket)
// and the top kQ8BucketMantissa bits of the mantissa.
constexpr int kQ8BucketMantissa = 6;
constexpr std::uint32_t kQ8BucketFloor = 96u << 23;  // the bits of 2^-31
constexpr int kQ8BucketShift = 23 - kQ8BucketMantissa;
constexpr int kQ8SignBucket = 1 << 11;                // 31 exponents x 64 + 1.0 < 2^11
constexpr int kQ8Buckets = 2 * kQ8SignBucket;
// The most midpoints one bucket holds (checked when the tables are built).
constexpr int kQ8Fixups = 2;

struct Q8Table {
    float map[256];  // the dynamic map: value of each code (times the block's absmax)
    // midpoints[k] = the midpoint of map[k] and map[k + 1] in float64, rounded
    // to float32 (k < 255); then +inf, so that a look-up may read past k = 254.
    float midpoints[255 + kQ8Fixups];
    // bucket[b] = how many midpoints lie below the lowest value of bucket b; the
    // code of n is that plus how many of the next kQ8Fixups midpoints are < n.
    // Three bytes more, never read as a count: SIMD look-ups load 4 bytes at a time.
    std::uint8_t bucket[kQ8Buckets + 3];
    // The midpoints in the order of a binary search (AVX-512 look-ups): level
    // L = 0..7 tests bit b = 128 >> L of the code, its entries j < 2^L start at
    // search[2^L - 1] and are midpoints[j * 2b + b - 1]. Entry 255: +inf, padding.
    alignas(64) float search[256];
};

// q8_tables[1]: the signed map; q8_tables[0]: the unsigned map.
extern const Q8Table q8_tables[2];

// "" if the tables were built, else why not (a map whose buckets hold more
// than kQ8Fixups midpoints): the module then refuses to import.
const char* q8_tables_error();

}  // namespace lrfast

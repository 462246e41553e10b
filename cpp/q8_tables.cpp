// Builds the q8 lookup tables (lrfast/q8_tables.hpp) from the generated maps.
#include "lrfast/q8_tables.hpp"

#include <cstring>
#include <limits>

#include "lrfast/q8_map_bits.hpp"

namespace lrfast {
namespace {

float from_bits(std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

const char* g_error = "";

// The smallest and largest float of bucket b (in value order).
void bucket_range(int b, float& lowest, float& highest) {
    const std::uint32_t first = std::uint32_t(b % kQ8SignBucket) << kQ8BucketShift;
    const float small = first == 0 ? 0.0f : from_bits(first + kQ8BucketFloor);
    const float large = from_bits(first + (1u << kQ8BucketShift) - 1 + kQ8BucketFloor);
    const bool negative = b >= kQ8SignBucket;
    lowest = negative ? -large : small;
    highest = negative ? -small : large;
}

Q8Table build(const std::uint32_t (&bits)[256]) {
    Q8Table t{};
    for (int k = 0; k < 256; ++k) t.map[k] = from_bits(bits[k]);
    for (int k = 0; k < 255; ++k)
        t.midpoints[k] = float((double(t.map[k]) + double(t.map[k + 1])) / 2);
    for (int k = 255; k < 255 + kQ8Fixups; ++k)
        t.midpoints[k] = std::numeric_limits<float>::infinity();
    for (int level = 0; level < 8; ++level) {
        const int bit = 128 >> level;
        for (int j = 0; j < 1 << level; ++j)
            t.search[(1 << level) - 1 + j] = t.midpoints[j * 2 * bit + bit - 1];
    }
    t.search[255] = std::numeric_limits<float>::infinity();
    for (int b = 0; b < kQ8Buckets; ++b) {
        float lowest, highest;
        bucket_range(b, lowest, highest);
        int below = 0, inside = 0;
        for (int k = 0; k < 255; ++k) {
            below += t.midpoints[k] < lowest;
            inside += lowest <= t.midpoints[k] && t.midpoints[k] <= highest;
        }
        if (inside > kQ8Fixups) g_error = "a q8 bucket holds more midpoints than kQ8Fixups";
        t.bucket[b] = std::uint8_t(below);
    }
    return t;
}

}  // namespace

const Q8Table q8_tables[2] = {build(kUnsignedMapBits), build(kSignedMapBits)};

const char* q8_tables_error() { return g_error; }

}  // namespace lrfast

// Builds the q8 lookup tables (lrfast/q8_tables.hpp) from the generated maps.
#include "lrfast/q8_tables.hpp"

#include <cstring>

#include "lrfast/q8_map_bits.hpp"

namespace lrfast {
namespace {

float from_bits(std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

std::uint32_t to_bits(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

const char* g_error = "";

Q8Table build(const std::uint32_t (&bits)[256], bool is_signed) {
    Q8Table t{};
    for (int k = 0; k < 256; ++k) t.map[k] = from_bits(bits[k]);
    // The midpoints >= 0 (lrfast.precision._MIDPOINTS), as float32 bits: for
    // non-negative floats the integer order is the value order.
    std::uint32_t mid[255];
    const int first = is_signed ? 127 : 0;
    for (int k = first; k < 255; ++k)
        mid[k] = to_bits(float((double(t.map[k]) + double(t.map[k + 1])) / 2));
    for (int c = 0; c < kQ8Cells; ++c) {
        const std::uint32_t lowest = kQ8CellFloor + (std::uint32_t(c) << kQ8CellShift);
        const std::uint32_t highest = lowest + ((1u << kQ8CellShift) - 1);
        std::uint32_t below = 0, inside = 0, low_bits = kQ8NoMidpoint;
        for (int k = first; k < 255; ++k) {
            if (mid[k] < kQ8CellFloor) g_error = "a q8 midpoint lies below the cells' floor";
            below += mid[k] < lowest;
            if (lowest <= mid[k] && mid[k] <= highest) {
                ++inside;
                low_bits = mid[k] & 0xffffu;
            }
        }
        if (inside > 1) g_error = "a q8 cell holds more than one midpoint";
        t.cell[c] = below << 24 | low_bits;
    }
    t.top_midpoint = mid[254];
    return t;
}

Q4Table build_q4(const std::uint32_t (&map)[16], const std::uint32_t (&threshold)[15]) {
    Q4Table t{};
    for (int k = 0; k < 16; ++k) t.map[k] = from_bits(map[k]);
    for (int k = 0; k < 15; ++k) t.threshold[k] = from_bits(threshold[k]);
    return t;
}

}  // namespace

const Q8Table q8_tables[2] = {build(kUnsignedMapBits, false), build(kSignedMapBits, true)};
const Q4Table q4_tables[2] = {build_q4(kQ4UnsignedMapBits, kQ4UnsignedThresholdBits),
                              build_q4(kQ4SignedMapBits, kQ4SignedThresholdBits)};

const char* q8_tables_error() { return g_error; }

}  // namespace lrfast

// Small helpers over simdjson's DOM for _envelope.pyx.
//
// Cython calls these instead of simdjson's simdjson_result<T> API so that every
// accessor is a plain noexcept inline call; only unique_fields() can throw
// (std::bad_alloc), and Cython declares it `except +` so that becomes MemoryError.
// Accessors assume the caller has checked type_code() first.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <utility>
#include <vector>

#include "simdjson.h"

namespace autocore_envelope {

using simdjson::dom::array;
using simdjson::dom::element;
using simdjson::dom::object;
using simdjson::dom::parser;

// Top-level keys the rules read; the enum indexes both this table and collect()'s output.
enum TopKey {
    KEY_PROTOCOL_VERSION, KEY_UUID, KEY_TIMESTAMP, KEY_CAN_DATA, KEY_ANALOG_SENSORS,
    KEY_SYSTEM_STATUS, KEY_GPS, KEY_EVENT, KEY_CHANNEL, KEY_STATE, KEY_DEVICE_TYPE,
    KEY_FIRMWARE_VERSION, KEY_CAPABILITIES, KEY_COMMAND_ID, KEY_COMMAND, KEY_STATUS,
    KEY_CHANNELS, KEY_RELAYS, TOP_KEY_COUNT
};
inline constexpr std::string_view TOP_KEYS[TOP_KEY_COUNT] = {
    "protocol_version", "uuid", "timestamp", "can_data", "analog_sensors",
    "system_status", "gps", "event", "channel", "state", "device_type",
    "firmware_version", "capabilities", "command_id", "command", "status",
    "channels", "relays",
};
// Row order of the fixed-key sections; _envelope.pyx lists sensor names and units alike.
inline constexpr int SYSTEM_STATUS_KEY_COUNT = 5;
inline constexpr std::string_view SYSTEM_STATUS_KEYS[SYSTEM_STATUS_KEY_COUNT] = {
    "cpu_temperature", "memory_usage", "uptime", "wifi_signal", "battery_voltage",
};
inline constexpr int GPS_KEY_COUNT = 6;
inline constexpr std::string_view GPS_KEYS[GPS_KEY_COUNT] = {
    "latitude", "longitude", "altitude", "speed", "heading", "satellites",
};
enum SignalKey { SIGNAL_VALUE, SIGNAL_UNIT, SIGNAL_KEY_COUNT };
inline constexpr std::string_view SIGNAL_KEYS[SIGNAL_KEY_COUNT] = {"value", "unit"};
enum RelayKey { RELAY_ITEM_ID, RELAY_ITEM_STATE, RELAY_KEY_COUNT };
inline constexpr std::string_view RELAY_KEYS[RELAY_KEY_COUNT] = {"relay_id", "state"};
inline constexpr std::string_view CAN_SIGNALS_KEY[1] = {"signals"};

struct Field {
    const char *key;
    size_t key_length;
    element value;
};

// Parse into the parser's own padded buffer; 0 means success.
inline int parse(parser &json_parser, const char *data, size_t length, element &root) noexcept {
    return static_cast<int>(json_parser.parse(data, length, true).get(root));
}

inline bool utf8_ok(const char *data, size_t length) noexcept {
    return simdjson::validate_utf8(data, length);
}

// One of '{' '[' '"' 'l' (int64) 'u' (uint64) 'd' (double) 't' (bool) 'n' (null).
inline char type_code(const element &value) noexcept {
    return static_cast<char>(value.type());
}

inline object as_object(const element &value) noexcept { return value.get_object().value_unsafe(); }
inline array as_array(const element &value) noexcept { return value.get_array().value_unsafe(); }
inline int64_t as_int64(const element &value) noexcept { return value.get_int64().value_unsafe(); }
inline uint64_t as_uint64(const element &value) noexcept {
    return value.get_uint64().value_unsafe();
}
inline double as_double(const element &value) noexcept { return value.get_double().value_unsafe(); }
inline bool as_bool(const element &value) noexcept { return value.get_bool().value_unsafe(); }
inline const char *string_data(const element &value) noexcept {
    return value.get_c_str().value_unsafe();
}
inline size_t string_length(const element &value) noexcept {
    return value.get_string_length().value_unsafe();
}

// Store the value of the LAST occurrence of each of `names` (JSON's last-wins rule);
// bit i of the result tells whether names[i] was present.
inline uint64_t collect(const object &fields, const std::string_view *names, int count,
                        element *values) noexcept {
    uint64_t present = 0;
    for (auto it = fields.begin(); it != fields.end(); ++it) {
        const char *key = it.key_c_str();
        const size_t length = it.key_length();
        for (int i = 0; i < count; ++i) {
            // Length and first byte rule out almost every name before memcmp runs.
            if (names[i].size() == length && length > 0 && names[i][0] == key[0] &&
                std::memcmp(names[i].data(), key, length) == 0) {
                values[i] = it.value();
                present |= uint64_t{1} << i;
                break;
            }
        }
    }
    return present;
}

inline uint64_t collect_top(const object &fields, element *values) noexcept {
    return collect(fields, TOP_KEYS, TOP_KEY_COUNT, values);
}
inline uint64_t collect_system_status(const object &fields, element *values) noexcept {
    return collect(fields, SYSTEM_STATUS_KEYS, SYSTEM_STATUS_KEY_COUNT, values);
}
inline uint64_t collect_gps(const object &fields, element *values) noexcept {
    return collect(fields, GPS_KEYS, GPS_KEY_COUNT, values);
}
inline uint64_t collect_signal(const object &fields, element *values) noexcept {
    return collect(fields, SIGNAL_KEYS, SIGNAL_KEY_COUNT, values);
}
inline uint64_t collect_relay(const object &fields, element *values) noexcept {
    return collect(fields, RELAY_KEYS, RELAY_KEY_COUNT, values);
}
inline uint64_t collect_can_signals(const object &fields, element *values) noexcept {
    return collect(fields, CAN_SIGNALS_KEY, 1, values);
}

// Fill `out` with dict semantics: keys in order of first occurrence, each with
// the value of its last occurrence.
// Reusable buffers for unique_fields(), owned by one Validator so that walking a
// section allocates nothing once the buffers have grown.
struct Scratch {
    std::vector<Field> fields;
    std::vector<std::pair<std::string_view, uint32_t>> order;
};

// Fill `scratch.fields` with dict semantics: keys in order of first occurrence,
// each with the value of its last occurrence. Sorting (key, position) pairs finds
// repeated keys in O(n log n) without hashing or per-key allocation.
inline void unique_fields(const object &fields, Scratch &scratch) {
    std::vector<Field> &out = scratch.fields;
    auto &order = scratch.order;
    out.clear();
    order.clear();
    for (auto it = fields.begin(); it != fields.end(); ++it) {
        order.emplace_back(std::string_view(it.key_c_str(), it.key_length()),
                           static_cast<uint32_t>(out.size()));
        out.push_back(Field{it.key_c_str(), it.key_length(), it.value()});
    }
    std::sort(order.begin(), order.end());
    bool repeated = false;
    size_t group = 0;  // first (earliest) entry of the current run of equal keys
    for (size_t i = 1; i < order.size(); ++i) {
        if (order[i].first != order[group].first) {
            group = i;
            continue;
        }
        // Same key later on: it lends its value to the first position and drops out.
        repeated = true;
        out[order[group].second].value = out[order[i].second].value;
        out[order[i].second].key = nullptr;
    }
    if (repeated) {
        out.erase(std::remove_if(out.begin(), out.end(),
                                 [](const Field &field) { return field.key == nullptr; }),
                  out.end());
    }
}

// Python prints floats in fixed notation from 1e-4 up to 1e16; the fast path stops
// below that, where at most 15 significant digits can be needed.
constexpr double FAST_REPR_MIN = 1e-4;
constexpr double FAST_REPR_LIMIT = 1e15;
// Integers up to 2**53 are exact doubles, so repr(float(n)) is just "n.0".
constexpr int64_t EXACT_INT_LIMIT = int64_t{1} << 53;
inline constexpr double POW10[] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
};
// Longest text the fast paths write: "-" + 16 digits + "." + "0" (or 19 fraction digits).
constexpr int FLOAT_TEXT_BYTES = 40;

inline char *write_digits(char *out, uint64_t value, int width) noexcept {
    char reversed[20];
    int count = 0;
    do {
        reversed[count++] = static_cast<char>('0' + value % 10);
        value /= 10;
    } while (value != 0 || count < width);
    while (count > 0) {
        *out++ = reversed[--count];
    }
    return out;
}

// Write repr(float(value)) for an int64 JSON number; 0 asks for the general path.
inline int int_repr(int64_t value, char *out) noexcept {
    if (value > EXACT_INT_LIMIT || value < -EXACT_INT_LIMIT) {
        return 0;
    }
    char *cursor = out;
    if (value < 0) {
        *cursor++ = '-';
    }
    cursor = write_digits(cursor, static_cast<uint64_t>(value < 0 ? -value : value), 1);
    *cursor++ = '.';
    *cursor++ = '0';
    return static_cast<int>(cursor - out);
}

// Write Python's repr() of a double when a short exact method applies; 0 asks for
// the general (dtoa) path.
//
// Any decimal of at most 15 significant digits that rounds back to `value` is the
// only such decimal (DBL_DIG is 15), so it is exactly the shortest repr Python
// prints. Candidates are floor/ceil of value * 10**k for growing k: the product
// is off by at most a quarter unit below 1e15, so they bracket the true nearest.
inline int float_repr(double value, char *out) noexcept {
    char *cursor = out;
    const double magnitude = std::fabs(value);
    if (std::signbit(value)) {
        *cursor++ = '-';
    }
    if (magnitude == 0.0) {
        std::memcpy(cursor, "0.0", 3);
        return static_cast<int>(cursor + 3 - out);
    }
    if (!(magnitude >= FAST_REPR_MIN && magnitude < FAST_REPR_LIMIT)) {
        return 0;
    }
    for (int k = 0; k < 16; ++k) {
        const double scaled = magnitude * POW10[k];
        if (scaled >= FAST_REPR_LIMIT) {
            return 0;
        }
        for (const double candidate : {std::floor(scaled), std::ceil(scaled)}) {
            if (candidate / POW10[k] != magnitude) {
                continue;
            }
            const uint64_t digits = static_cast<uint64_t>(candidate);
            const uint64_t unit = static_cast<uint64_t>(POW10[k]);
            cursor = write_digits(cursor, digits / unit, 1);
            *cursor++ = '.';
            cursor = write_digits(cursor, k == 0 ? 0 : digits % unit, k == 0 ? 1 : k);
            return static_cast<int>(cursor - out);
        }
    }
    return 0;
}

}  // namespace autocore_envelope

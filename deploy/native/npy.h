// Reading and writing NumPy .npy files (format version 1.0, little-endian, C order): the host hands the tool
// its images as one .npy and reads the embeddings back as another, so no image codec is needed on the device.
#pragma once

#include <cstdio>
#include <cstdint>
#include <string>
#include <vector>

namespace npy {

struct Array {
    std::string dtype;           // "u1" (uint8) or "f4" (float32)
    std::vector<long> shape;
    std::vector<unsigned char> bytes;

    long count() const {
        long total = 1;
        for (long dim : shape) total *= dim;
        return total;
    }
};

// Reads `path`; on failure returns false and sets `error` to one line naming what is wrong.
bool read(const std::string& path, Array& array, std::string& error);

// Writes float32 data of `shape` to `path` through a temporary file renamed into place.
bool write_float32(const std::string& path, const std::vector<long>& shape, const float* data, std::string& error);

}  // namespace npy

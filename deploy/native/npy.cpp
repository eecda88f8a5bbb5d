#include "npy.h"

#include <cstring>

namespace npy {

namespace {

const char kMagic[] = "\x93NUMPY";

std::string header_value(const std::string& header, const std::string& key) {
    size_t at = header.find("'" + key + "'");
    if (at == std::string::npos) return "";
    at = header.find(':', at);
    if (at == std::string::npos) return "";
    at++;
    while (at < header.size() && header[at] == ' ') at++;
    if (at >= header.size()) return "";
    if (header[at] == '\'') {
        size_t end = header.find('\'', at + 1);
        return end == std::string::npos ? "" : header.substr(at + 1, end - at - 1);
    }
    if (header[at] == '(') {
        size_t end = header.find(')', at);
        return end == std::string::npos ? "" : header.substr(at + 1, end - at - 1);
    }
    size_t end = header.find_first_of(",}", at);
    return header.substr(at, end - at);
}

}  // namespace

bool read(const std::string& path, Array& array, std::string& error) {
    FILE* file = std::fopen(path.c_str(), "rb");
    if (!file) {
        error = path + ": cannot open";
        return false;
    }
    unsigned char preamble[10];
    if (std::fread(preamble, 1, 10, file) != 10 || std::memcmp(preamble, kMagic, 6) != 0) {
        std::fclose(file);
        error = path + ": not a .npy file (no \\x93NUMPY magic)";
        return false;
    }
    if (preamble[6] != 1) {
        std::fclose(file);
        error = path + ": .npy format version " + std::to_string(preamble[6]) + " (only 1.0 is read)";
        return false;
    }
    size_t header_length = preamble[8] | (preamble[9] << 8);
    std::string header(header_length, '\0');
    if (std::fread(&header[0], 1, header_length, file) != header_length) {
        std::fclose(file);
        error = path + ": truncated .npy header";
        return false;
    }
    std::string descr = header_value(header, "descr");
    if (descr != "|u1" && descr != "<f4") {
        std::fclose(file);
        error = path + ": dtype " + descr + " (expected uint8 images or float32 tensors)";
        return false;
    }
    if (header_value(header, "fortran_order") != "False") {
        std::fclose(file);
        error = path + ": Fortran-ordered array (write it C-contiguous)";
        return false;
    }
    array.dtype = descr.substr(1);
    array.shape.clear();
    std::string shape = header_value(header, "shape");
    size_t start = 0;
    while (start < shape.size()) {
        size_t end = shape.find(',', start);
        std::string item = shape.substr(start, end == std::string::npos ? std::string::npos : end - start);
        if (item.find_first_not_of(' ') != std::string::npos) array.shape.push_back(std::stol(item));
        if (end == std::string::npos) break;
        start = end + 1;
    }
    size_t item_size = array.dtype == "u1" ? 1 : 4;
    size_t expected = static_cast<size_t>(array.count()) * item_size;
    array.bytes.resize(expected);
    size_t got = std::fread(array.bytes.data(), 1, expected, file);
    std::fclose(file);
    if (got != expected) {
        error = path + ": holds " + std::to_string(got) + " data bytes, its shape needs " + std::to_string(expected);
        return false;
    }
    return true;
}

bool write_float32(const std::string& path, const std::vector<long>& shape, const float* data, std::string& error) {
    std::string dims;
    long count = 1;
    for (long dim : shape) {
        dims += std::to_string(dim) + ",";
        count *= dim;
    }
    if (shape.size() > 1) dims.pop_back();
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
    size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header.push_back('\n');
    std::string temporary = path + ".tmp";
    FILE* file = std::fopen(temporary.c_str(), "wb");
    if (!file) {
        error = temporary + ": cannot create";
        return false;
    }
    unsigned char preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                                  static_cast<unsigned char>(header.size() & 0xff),
                                  static_cast<unsigned char>(header.size() >> 8)};
    bool ok = std::fwrite(preamble, 1, 10, file) == 10 && std::fwrite(header.data(), 1, header.size(), file) == header.size() &&
              std::fwrite(data, sizeof(float), count, file) == static_cast<size_t>(count);
    ok = (std::fclose(file) == 0) && ok;
    if (!ok || std::rename(temporary.c_str(), path.c_str()) != 0) {
        std::remove(temporary.c_str());
        error = path + ": write failed";
        return false;
    }
    return true;
}

}  // namespace npy

// face_embed: one embedding per aligned face through ncnn's C++ API, the path a phone app takes.
//
// The host writes the faces as one .npy (uint8, N x H x W x 3, RGB) and passes the model manifest's
// preprocessing; the tool converts pixels with ncnn::Mat::from_pixels and substract_mean_normalize, as an app
// would, and writes the embeddings as float32 N x D .npy. A float32 N x 3 x H x W .npy is taken as already
// preprocessed (for comparing layer by layer). `--blobs a,b` writes those blobs of the first image instead.
// It prints one JSON line: the CPU features ncnn detected, the options it ran with, and what it wrote.

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "net.h"
#include "net_setup.h"
#include "npy.h"

namespace {

struct Arguments {
    std::string param, bin, input, output, in_blob = "in0", out_blob = "out0", precision = "fp32", color = "RGB";
    std::string blobs, blobs_dir;
    float mean[3] = {127.5f, 127.5f, 127.5f};
    float std_dev[3] = {127.5f, 127.5f, 127.5f};
    int threads = 1, fp16_arithmetic = -1;
    bool vulkan = false, cpu_info_only = false;
};

const char kUsage[] =
    "usage: face_embed --param M.param --bin M.bin --input faces.npy --output embeddings.npy\n"
    "  [--precision fp32|fp16|int8] [--fp16-arithmetic 0|1] [--threads N] [--vulkan]\n"
    "  [--mean R,G,B] [--std R,G,B] [--color RGB|BGR] [--in-blob in0] [--out-blob out0]\n"
    "  [--blobs name,name --blobs-dir DIR]   |   face_embed --cpu-info\n";

int fail(const std::string& message) {
    std::fprintf(stderr, "face_embed: %s\n", message.c_str());
    return 2;
}

bool parse_triple(const std::string& text, float values[3]) {
    return std::sscanf(text.c_str(), "%f,%f,%f", &values[0], &values[1], &values[2]) == 3;
}

std::vector<std::string> split(const std::string& text) {
    std::vector<std::string> items;
    size_t start = 0;
    while (start <= text.size()) {
        size_t end = text.find(',', start);
        if (end == std::string::npos) end = text.size();
        if (end > start) items.push_back(text.substr(start, end - start));
        start = end + 1;
    }
    return items;
}

bool parse(int argc, char** argv, Arguments& args, std::string& error) {
    for (int i = 1; i < argc; i++) {
        std::string key = argv[i];
        if (key == "--cpu-info") { args.cpu_info_only = true; continue; }
        if (key == "--vulkan") { args.vulkan = true; continue; }
        if (i + 1 >= argc) { error = key + " needs a value"; return false; }
        std::string value = argv[++i];
        if (key == "--param") args.param = value;
        else if (key == "--bin") args.bin = value;
        else if (key == "--input") args.input = value;
        else if (key == "--output") args.output = value;
        else if (key == "--precision") args.precision = value;
        else if (key == "--fp16-arithmetic") args.fp16_arithmetic = std::atoi(value.c_str());
        else if (key == "--threads") args.threads = std::atoi(value.c_str());
        else if (key == "--color") args.color = value;
        else if (key == "--in-blob") args.in_blob = value;
        else if (key == "--out-blob") args.out_blob = value;
        else if (key == "--blobs") args.blobs = value;
        else if (key == "--blobs-dir") args.blobs_dir = value;
        else if (key == "--mean") { if (!parse_triple(value, args.mean)) { error = "--mean wants R,G,B"; return false; } }
        else if (key == "--std") { if (!parse_triple(value, args.std_dev)) { error = "--std wants R,G,B"; return false; } }
        else { error = "unknown option " + key; return false; }
    }
    if (args.cpu_info_only) return true;
    if (args.param.empty() || args.bin.empty() || args.input.empty() || (args.output.empty() && args.blobs.empty())) {
        error = "--param, --bin, --input and --output (or --blobs) are required";
        return false;
    }
    if (args.color != "RGB" && args.color != "BGR") { error = "--color must be RGB or BGR, got " + args.color; return false; }
    if (args.threads < 1) { error = "--threads must be at least 1"; return false; }
    if (!args.blobs.empty() && args.blobs_dir.empty()) { error = "--blobs needs --blobs-dir"; return false; }
    return true;
}

// One input Mat per face: uint8 HWC RGB pixels preprocessed as the manifest says, or a preprocessed CHW tensor.
bool input_mat(const npy::Array& faces, long index, const Arguments& args, ncnn::Mat& mat, std::string& error) {
    if (faces.dtype == "u1") {
        if (faces.shape.size() != 4 || faces.shape[3] != 3) {
            error = args.input + ": uint8 faces must be N x H x W x 3";
            return false;
        }
        int height = static_cast<int>(faces.shape[1]), width = static_cast<int>(faces.shape[2]);
        const unsigned char* pixels = faces.bytes.data() + index * height * width * 3;
        int conversion = args.color == "RGB" ? ncnn::Mat::PIXEL_RGB : ncnn::Mat::PIXEL_RGB2BGR;
        mat = ncnn::Mat::from_pixels(pixels, conversion, width, height);
        // from_pixels already put the channels in the model's order, the order the manifest's mean/std use.
        float scale[3] = {1.f / args.std_dev[0], 1.f / args.std_dev[1], 1.f / args.std_dev[2]};
        mat.substract_mean_normalize(args.mean, scale);
        return true;
    }
    if (faces.shape.size() != 4 || faces.shape[1] != 3) {
        error = args.input + ": float32 input must be N x 3 x H x W (preprocessed)";
        return false;
    }
    int height = static_cast<int>(faces.shape[2]), width = static_cast<int>(faces.shape[3]);
    const float* tensor = reinterpret_cast<const float*>(faces.bytes.data()) + index * 3 * height * width;
    mat = ncnn::Mat(width, height, 3, const_cast<float*>(tensor)).clone();
    return true;
}

std::string json_escape(const std::string& text) {
    std::string out;
    for (char c : text) {
        if (c == '"' || c == '\\') out.push_back('\\');
        out.push_back(c);
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    Arguments args;
    std::string error;
    if (argc < 2 || !parse(argc, argv, args, error)) {
        std::fputs(kUsage, stderr);
        return fail(error.empty() ? "no arguments" : error);
    }
    if (args.cpu_info_only) {
        std::printf("{\"cpu\": %s}\n", face_native::cpu_features_json().c_str());
        return 0;
    }
    ncnn::Net net;
    net.opt.num_threads = args.threads;
    if (!face_native::set_precision(net.opt, args.precision, args.fp16_arithmetic))
        return fail("--precision must be fp32, fp16 or int8, got " + args.precision);
#if NCNN_VULKAN
    net.opt.use_vulkan_compute = args.vulkan;
#else
    if (args.vulkan) return fail("--vulkan: this libncnn was built without Vulkan (NCNN_VULKAN=OFF)");
#endif
    // Options are read at load time: ncnn picks each layer's kernels then.
    if (net.load_param(args.param.c_str()) != 0) return fail(args.param + ": ncnn could not load this .param");
    if (net.load_model(args.bin.c_str()) != 0) return fail(args.bin + ": ncnn could not load these weights (do they match " + args.param + "?)");

    npy::Array faces;
    if (!npy::read(args.input, faces, error)) return fail(error);
    long count = faces.shape.empty() ? 0 : faces.shape[0];
    if (count == 0) return fail(args.input + ": holds no faces");

    if (!args.blobs.empty()) {
        ncnn::Mat input;
        if (!input_mat(faces, 0, args, input, error)) return fail(error);
        ncnn::Extractor extractor = net.create_extractor();
        extractor.set_light_mode(false);  // keep earlier blobs while later ones are computed
        extractor.input(args.in_blob.c_str(), input);
        std::vector<std::string> names = split(args.blobs);
        for (size_t k = 0; k < names.size(); k++) {
            ncnn::Mat blob;
            if (extractor.extract(names[k].c_str(), blob) != 0) return fail(args.param + ": no blob named " + names[k]);
            ncnn::Mat flat = blob.reshape(blob.w * blob.h * blob.d * blob.c);
            std::vector<long> shape = {blob.c, blob.d, blob.h, blob.w};
            std::string path = args.blobs_dir + "/blob_" + std::to_string(k) + ".npy";
            std::vector<float> values(static_cast<float*>(flat.data), static_cast<float*>(flat.data) + flat.w);
            if (!npy::write_float32(path, shape, values.data(), error)) return fail(error);
        }
        std::printf("{\"cpu\": %s, \"blobs\": %zu}\n", face_native::cpu_features_json().c_str(), names.size());
        return 0;
    }

    std::vector<float> embeddings;
    long dim = -1;
    for (long index = 0; index < count; index++) {
        ncnn::Mat input;
        if (!input_mat(faces, index, args, input, error)) return fail(error);
        ncnn::Extractor extractor = net.create_extractor();
        extractor.input(args.in_blob.c_str(), input);
        ncnn::Mat output;
        if (extractor.extract(args.out_blob.c_str(), output) != 0)
            return fail(args.param + ": extracting " + args.out_blob + " failed on face " + std::to_string(index));
        ncnn::Mat flat = output.reshape(output.w * output.h * output.d * output.c);
        if (dim < 0) dim = flat.w;
        if (flat.w != dim) return fail("embedding size changed from " + std::to_string(dim) + " to " + std::to_string(flat.w));
        embeddings.insert(embeddings.end(), static_cast<float*>(flat.data), static_cast<float*>(flat.data) + dim);
    }
    if (!npy::write_float32(args.output, {count, dim}, embeddings.data(), error)) return fail(error);
    std::printf("{\"cpu\": %s, \"precision\": \"%s\", \"fp16_arithmetic\": %d, \"threads\": %d, \"images\": %ld, \"dim\": %ld, "
                "\"output\": \"%s\"}\n",
                face_native::cpu_features_json().c_str(), args.precision.c_str(), net.opt.use_fp16_arithmetic ? 1 : 0,
                args.threads, count, dim, json_escape(args.output).c_str());
    return 0;
}

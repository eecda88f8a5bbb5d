// face_bench: latency of one ncnn model through the C++ API, speaking benchncnn's language.
//
// ncnn ships benchncnn in neither its wheels nor its source archive, so this is the project's own, with
// benchncnn's command line (`[loops] [threads] [powersave] [gpu_device] [cooling_down] param=M shape=[w,h,c]`)
// and output (settings lines, then `<param>  min = ..  max = ..  avg = ..` in ms), so one parser and one adb
// driver serve both. Two keys benchncnn lacks: `bin=M.bin` runs the real weights (benchncnn runs zeros), and
// `precision=fp32|fp16|int8` (default fp16, benchncnn's setting: fp16 storage and arithmetic where the CPU has them).

#include <algorithm>
#include <chrono>
#include <cfloat>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "benchmark.h"
#include "cpu.h"
#include "datareader.h"
#include "net.h"
#include "net_setup.h"

namespace {

const int kWarmupLoops = 8;  // as benchncnn

int fail(const std::string& message) {
    std::fprintf(stderr, "face_bench: %s\n", message.c_str());
    return 2;
}

// benchncnn's stand-in weights: every read gets zeros.
class ZeroWeights : public ncnn::DataReader {
public:
    size_t read(void* buf, size_t size) const override {
        std::fill(static_cast<unsigned char*>(buf), static_cast<unsigned char*>(buf) + size, 0);
        return size;
    }
};

}  // namespace

int main(int argc, char** argv) {
    int loop_count = 4, threads = ncnn::get_physical_big_cpu_count(), powersave = 2, gpu_device = -1, cooling_down = 1;
    int* positional[] = {&loop_count, &threads, &powersave, &gpu_device, &cooling_down};
    int next_positional = 0;
    std::string param, bin, precision = "fp16";
    int width = 0, height = 0, channels = 0;
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i];
        size_t eq = arg.find('=');
        if (eq == std::string::npos) {
            if (next_positional >= 5) return fail("too many positional arguments at " + arg);
            *positional[next_positional++] = std::atoi(arg.c_str());
            continue;
        }
        std::string key = arg.substr(0, eq), value = arg.substr(eq + 1);
        if (key == "param") param = value;
        else if (key == "bin") bin = value;
        else if (key == "precision") precision = value;
        else if (key == "shape") {
            if (std::sscanf(value.c_str(), "[%d,%d,%d]", &width, &height, &channels) != 3)
                return fail("shape wants [w,h,c], got " + value);
        } else return fail("unknown key " + key);
    }
    if (param.empty() || width <= 0) return fail("param=<model.param> and shape=[w,h,c] are required");
    if (loop_count < 1 || threads < 1) return fail("loop count and threads must be at least 1");
#if !NCNN_VULKAN
    if (gpu_device >= 0) return fail("gpu_device " + std::to_string(gpu_device) + ": this libncnn was built without Vulkan");
#endif

    std::fprintf(stderr, "loop_count = %d\n", loop_count);
    std::fprintf(stderr, "num_threads = %d\n", threads);
    std::fprintf(stderr, "powersave = %d\n", powersave);
    std::fprintf(stderr, "gpu_device = %d\n", gpu_device);
    std::fprintf(stderr, "cooling_down = %d\n", cooling_down);
    std::fprintf(stderr, "precision = %s\n", precision.c_str());
    std::fprintf(stderr, "cpu = %s\n", face_native::cpu_features_json().c_str());
    ncnn::set_cpu_powersave(powersave);

    ncnn::Net net;
    net.opt.num_threads = threads;
    net.opt.lightmode = true;
    if (!face_native::set_precision(net.opt, precision, -1)) return fail("precision must be fp32, fp16 or int8, got " + precision);
#if NCNN_VULKAN
    net.opt.use_vulkan_compute = gpu_device >= 0;
    if (gpu_device >= 0) net.set_vulkan_device(gpu_device);
#endif
    if (net.load_param(param.c_str()) != 0) return fail(param + ": ncnn could not load this .param");
    int loaded = bin.empty() ? net.load_model(ZeroWeights()) : net.load_model(bin.c_str());
    if (loaded != 0) return fail((bin.empty() ? param : bin) + ": ncnn could not load the weights");
    const std::vector<const char*>& inputs = net.input_names();
    const std::vector<const char*>& outputs = net.output_names();
    if (inputs.empty() || outputs.empty()) return fail(param + ": the graph names no input or output blob");

    ncnn::Mat input(width, height, channels);
    for (int k = 0; k < static_cast<int>(input.total()); k++) input[k] = 0.01f * static_cast<float>((k * 7919) % 201 - 100);

    auto run_once = [&]() {
        ncnn::Extractor extractor = net.create_extractor();
        extractor.input(inputs[0], input);
        ncnn::Mat output;
        return extractor.extract(outputs[0], output);
    };
    if (cooling_down) std::this_thread::sleep_for(std::chrono::seconds(10));
    for (int k = 0; k < kWarmupLoops; k++)
        if (run_once() != 0) return fail(param + ": extracting " + outputs[0] + " failed");
    double time_min = DBL_MAX, time_max = -DBL_MAX, time_sum = 0;
    for (int k = 0; k < loop_count; k++) {
        double start = ncnn::get_current_time();
        run_once();
        double elapsed = ncnn::get_current_time() - start;
        time_min = std::min(time_min, elapsed);
        time_max = std::max(time_max, elapsed);
        time_sum += elapsed;
    }
    std::fprintf(stderr, "%20s  min = %7.2f  max = %7.2f  avg = %7.2f\n", param.c_str(), time_min, time_max, time_sum / loop_count);
    return 0;
}

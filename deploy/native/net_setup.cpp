#include "net_setup.h"

#include "cpu.h"

namespace face_native {

bool set_precision(ncnn::Option& opt, const std::string& precision, int fp16_arithmetic) {
    if (precision != "fp32" && precision != "fp16" && precision != "int8") return false;
    bool fp16 = precision == "fp16";
    opt.use_fp16_storage = fp16;
    opt.use_fp16_packed = fp16;
    opt.use_fp16_arithmetic = fp16_arithmetic < 0 ? fp16 : fp16_arithmetic != 0;
    opt.use_bf16_storage = false;
    opt.use_int8_inference = precision == "int8";
    return true;
}

static std::string feature(const char* name, int value) {
    return std::string(", \"") + name + "\": " + std::to_string(value != 0 ? 1 : 0);
}

std::string cpu_features_json() {
    std::string json = "{";
#if defined(__aarch64__)
    json += "\"isa\": \"aarch64\"";
    json += feature("neon", ncnn::cpu_support_arm_neon());
    json += feature("vfpv4", ncnn::cpu_support_arm_vfpv4());
    json += feature("asimdhp", ncnn::cpu_support_arm_asimdhp());
    json += feature("asimddp", ncnn::cpu_support_arm_asimddp());
    json += feature("asimdfhm", ncnn::cpu_support_arm_asimdfhm());
    json += feature("bf16", ncnn::cpu_support_arm_bf16());
    json += feature("i8mm", ncnn::cpu_support_arm_i8mm());
    json += feature("sve", ncnn::cpu_support_arm_sve());
    json += feature("sve2", ncnn::cpu_support_arm_sve2());
#elif defined(__x86_64__) || defined(__i386__)
    json += "\"isa\": \"x86\"";
    json += feature("avx", ncnn::cpu_support_x86_avx());
    json += feature("fma", ncnn::cpu_support_x86_fma());
    json += feature("f16c", ncnn::cpu_support_x86_f16c());
    json += feature("avx2", ncnn::cpu_support_x86_avx2());
    json += feature("avx_vnni", ncnn::cpu_support_x86_avx_vnni());
    json += feature("avx512", ncnn::cpu_support_x86_avx512());
    json += feature("avx512_vnni", ncnn::cpu_support_x86_avx512_vnni());
    json += feature("avx512_fp16", ncnn::cpu_support_x86_avx512_fp16());
#else
    json += "\"isa\": \"other\"";
#endif
    // The kernel variants compiled into this libncnn: a feature the CPU has but the build lacks is not used.
    json += ", \"compiled\": \"";
#if NCNN_ARM82
    json += " arm82";
#endif
#if NCNN_ARM82DOT
    json += " arm82dot";
#endif
#if NCNN_ARM82FP16FML
    json += " arm82fp16fml";
#endif
#if NCNN_ARM84BF16
    json += " arm84bf16";
#endif
#if NCNN_ARM84I8MM
    json += " arm84i8mm";
#endif
#if NCNN_ARM86SVE
    json += " arm86sve";
#endif
#if NCNN_AVX
    json += " avx";
#endif
#if NCNN_FMA
    json += " fma";
#endif
#if NCNN_AVX2
    json += " avx2";
#endif
#if NCNN_AVX512
    json += " avx512";
#endif
#if NCNN_INT8
    json += " int8";
#endif
#if NCNN_VULKAN
    json += " vulkan";
#endif
    json += "\"";
    json += ", \"cpu_count\": " + std::to_string(ncnn::get_cpu_count());
    json += ", \"big_cpu_count\": " + std::to_string(ncnn::get_big_cpu_count());
    json += "}";
    return json;
}

}  // namespace face_native

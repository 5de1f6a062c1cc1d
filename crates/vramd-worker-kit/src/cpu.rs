//! Which CPU code a worker's engine runs, for `/internal/health` and `vramctl ps`: the x86-64
//! level its ggml was built for (from ggml's own feature report) beside the level of the CPU
//! it runs on (from `/proc/cpuinfo`), so a package built for a baseline that leaves a modern
//! CPU idle, or a build that needs more than this CPU has, shows at a glance. Pure: the texts
//! in, one line out. The levels are [`vramd_protocol::cpu`]'s.

use vramd_protocol::cpu;

/// The features ggml reports as on (`NAME = 1 | …`, as `llama_print_system_info` and
/// `sd_get_system_info` write them), lower-cased, in their order.
pub fn built_features(system_info: &str) -> Vec<String> {
    // Only instruction sets: not OPENMP, REPACK, LLAMAFILE…
    const ISA: &[&str] = &[
        "SSE", "SSSE", "AVX", "F16C", "FMA", "BMI", "AMX", "NEON", "SVE", "DOTPROD", "MATMUL",
    ];
    system_info
        .split('|')
        .filter_map(|part| part.split_once('='))
        // The name is the last word before `=` (`CPU : SSE3`, `System Info: \n SSE3`).
        .filter_map(|(name, value)| Some((name.split_whitespace().last()?, value.trim())))
        .filter(|(name, value)| {
            ISA.iter().any(|p| name.to_ascii_uppercase().starts_with(p)) && !matches!(*value, "0" | "")
        })
        .map(|(name, _)| name.to_ascii_lowercase())
        .collect()
}

/// One line: `x86-64-v3 build (avx avx2 f16c fma) on a x86-64-v4 CPU`.
pub fn describe(system_info: &str, cpuinfo: &str) -> String {
    let built = built_features(system_info);
    // ggml reports neither SSE4.2 nor POPCNT (SSSE3 comes with both in its builds), and
    // AVX-512 as one feature.
    let build_level = cpu::level(|f| match f {
        "sse4_2" | "popcnt" => built.iter().any(|b| b == "ssse3"),
        "avx512f" | "avx512bw" | "avx512cd" | "avx512dq" | "avx512vl" => built.iter().any(|b| b == "avx512"),
        f => built.iter().any(|b| b == f),
    });
    let machine = match cpu::cpuinfo_level(cpuinfo) {
        Some(level) => format!("a {level} CPU"),
        None => "an unknown CPU".to_owned(),
    };
    format!("{build_level} build ({}) on {machine}", built.join(" "))
}

/// [`describe`] for this process: `system_info` from the engine, `/proc/cpuinfo` read here.
pub fn this_machine(system_info: &str) -> String {
    describe(
        system_info,
        &std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA: &str = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ";
    const SD_BASELINE: &str = "System Info: \n   SSE3 = 1 |    SSSE3 = 1 |    OPENMP = 1 | ";
    const CPUINFO_V4: &str =
        "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 sse4_2 popcnt avx f16c fma avx2 bmi2 avx512f avx512bw avx512cd avx512dq avx512vl\n";

    #[test]
    fn builds_and_machines_are_named_by_level() {
        assert_eq!(
            built_features(LLAMA),
            ["sse3", "ssse3", "avx", "avx2", "f16c", "fma", "bmi2"]
        );
        assert_eq!(
            describe(LLAMA, CPUINFO_V4),
            "x86-64-v3 build (sse3 ssse3 avx avx2 f16c fma bmi2) on a x86-64-v4 CPU"
        );
        assert_eq!(
            describe(SD_BASELINE, ""),
            "x86-64-v2 build (sse3 ssse3) on an unknown CPU"
        );
        assert_eq!(
            describe(&format!("{LLAMA}AVX512 = 1 | "), CPUINFO_V4),
            "x86-64-v4 build (sse3 ssse3 avx avx2 f16c fma bmi2 avx512) on a x86-64-v4 CPU"
        );
        // A level needs the ones below it.
        assert_eq!(
            describe("CPU : AVX512 = 1 | ", ""),
            "x86-64 build (avx512) on an unknown CPU"
        );
        assert_eq!(describe("", "flags : fpu sse2\n"), "x86-64 build () on a x86-64 CPU");
        // Off features and non-ISA entries are left out.
        assert_eq!(
            built_features("AVX = 0 | OPENMP = 1 | REPACK = 1"),
            Vec::<String>::new()
        );
    }
}

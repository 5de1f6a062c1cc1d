//! Which CPU code a worker's engine runs, for `/internal/health` and `vramctl ps`: the x86-64
//! level its ggml was built for (from ggml's own feature report) beside the level of the CPU
//! it runs on (from `/proc/cpuinfo`), so a package built for a baseline that leaves a modern
//! CPU idle, or a build that needs more than this CPU has, shows at a glance. Pure: the texts
//! in, one line out.

/// x86-64 micro-architecture levels, by the features that mark them.
fn level(has: impl Fn(&str) -> bool) -> &'static str {
    if has("avx512f") {
        "x86-64-v4"
    } else if has("avx2") && has("fma") && has("f16c") {
        "x86-64-v3"
    } else if has("ssse3") || has("sse4_2") {
        "x86-64-v2"
    } else {
        "x86-64"
    }
}

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
    // ggml writes AVX512 as one feature; `level` asks for the flag's /proc name.
    let build_level = level(|f| built.iter().any(|b| b == f || (f == "avx512f" && b == "avx512")));
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    let machine = if flags.is_empty() {
        "an unknown CPU".to_owned()
    } else {
        format!("a {} CPU", level(|f| flags.contains(&f)))
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
        "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 sse4_2 popcnt avx f16c fma avx2 bmi2 avx512f\n";

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
            describe("CPU : AVX512 = 1 | ", CPUINFO_V4),
            "x86-64-v4 build (avx512) on a x86-64-v4 CPU"
        );
        assert_eq!(describe("", "flags : fpu sse2\n"), "x86-64 build () on a x86-64 CPU");
        // Off features and non-ISA entries are left out.
        assert_eq!(
            built_features("AVX = 0 | OPENMP = 1 | REPACK = 1"),
            Vec::<String>::new()
        );
    }
}

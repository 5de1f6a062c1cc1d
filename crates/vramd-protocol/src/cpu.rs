//! x86-64 micro-architecture levels (the psABI's `x86-64`, `-v2`, `-v3`, `-v4`), named in one
//! place because three parties agree on them: the packages install an image worker per level
//! (`vramd-sd-worker` for the baseline, `vramd-sd-worker.x86-64-v3` …), the daemon starts the
//! best one this CPU runs ([`best_variant`]), and each worker's health names the level of the
//! code it runs. Pure: flag lists in, names out.

/// The levels, lowest first. `x86-64` is every 64-bit x86 CPU; `-v2` adds SSE4.2 and POPCNT
/// (Nehalem, 2008); `-v3` adds AVX2, FMA, F16C and BMI2 (Haswell, 2013; Zen); `-v4` adds the
/// AVX-512 base (Skylake-X, Zen 4).
pub const LEVELS: [&str; 4] = ["x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"];

/// The features that mark each level above the baseline, as `/proc/cpuinfo` names them.
const MARKS: [&[&str]; 3] = [
    &["sse4_2", "popcnt"],
    &["avx2", "fma", "f16c", "bmi2"],
    &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"],
];

/// The highest level whose features (and every lower level's) `has` reports.
pub fn level(has: impl Fn(&str) -> bool) -> &'static str {
    let reached = MARKS.iter().take_while(|marks| marks.iter().all(|f| has(f))).count();
    LEVELS[reached]
}

/// The `flags` line of `/proc/cpuinfo` (the first CPU's: they are alike), split.
pub fn cpuinfo_flags(cpuinfo: &str) -> Vec<&str> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default()
}

/// The level of a CPU from its `/proc/cpuinfo`; `None` when the text has no flags (not
/// x86, or not Linux).
pub fn cpuinfo_level(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo_flags(cpuinfo);
    (!flags.is_empty()).then(|| level(|f| flags.contains(&f)))
}

/// The file name of the image worker built for `level`: the baseline keeps the plain name.
pub fn variant_name(worker: &str, level: &str) -> String {
    if level == LEVELS[0] {
        worker.to_owned()
    } else {
        format!("{worker}.{level}")
    }
}

/// Which build of `worker` to start on a CPU of `cpu_level`: the highest level at or below
/// it for which `exists` finds a file, else the plain name (the baseline in a package; the
/// only build in a build tree; what a CPU whose level is unknown gets).
pub fn best_variant(worker: &str, cpu_level: Option<&str>, exists: impl Fn(&str) -> bool) -> String {
    let Some(top) = cpu_level.and_then(|l| LEVELS.iter().position(|x| *x == l)) else {
        return worker.to_owned();
    };
    LEVELS[1..=top]
        .iter()
        .rev()
        .map(|l| variant_name(worker, l))
        .find(|name| exists(name))
        .unwrap_or_else(|| worker.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "processor\t: 0\nflags\t\t: fpu sse2 ssse3 sse4_2 popcnt avx avx2 fma f16c bmi2 avx512f avx512bw avx512cd avx512dq avx512vl\n";
    const WESTMERE: &str = "flags\t\t: fpu sse2 ssse3 sse4_1 sse4_2 popcnt aes\n";

    #[test]
    fn levels_follow_the_psabi() {
        assert_eq!(cpuinfo_level(V4), Some("x86-64-v4"));
        assert_eq!(cpuinfo_level(WESTMERE), Some("x86-64-v2"));
        assert_eq!(cpuinfo_level("flags : fpu sse2 ssse3\n"), Some("x86-64"));
        assert_eq!(cpuinfo_level("processor : 0\n"), None);
        // A level needs every lower one: AVX-512 without AVX2 is not v4.
        assert_eq!(
            level(|f| f.starts_with("avx512") || f == "sse4_2" || f == "popcnt"),
            "x86-64-v2"
        );
    }

    #[test]
    fn the_best_image_worker_this_cpu_runs_is_started() {
        let installed = ["vramd-sd-worker", "vramd-sd-worker.x86-64-v3"];
        let exists = |n: &str| installed.contains(&n);
        let pick = |level| best_variant("vramd-sd-worker", level, exists);
        assert_eq!(pick(Some("x86-64-v4")), "vramd-sd-worker.x86-64-v3");
        assert_eq!(pick(Some("x86-64-v3")), "vramd-sd-worker.x86-64-v3");
        assert_eq!(pick(Some("x86-64-v2")), "vramd-sd-worker");
        assert_eq!(pick(Some("x86-64")), "vramd-sd-worker");
        assert_eq!(pick(None), "vramd-sd-worker");
        // A build tree: only the plain name, whatever the CPU.
        assert_eq!(best_variant("w", Some("x86-64-v4"), |n| n == "w"), "w");
        assert_eq!(variant_name("w", "x86-64"), "w");
        assert_eq!(variant_name("w", "x86-64-v2"), "w.x86-64-v2");
    }
}

//! The instruction-set tiers the kernels are written for, named in one place.
//!
//! Every kernel choice in this crate asks [`active`] (or [`at_least`]) instead of testing CPU
//! flags itself, so one setting caps them all: `DEEPSEEK_ISA=<tier>` (or `deepseek --isa`,
//! through [`init`]) runs the engine, a benchmark or the test suite as if the CPU stopped at
//! that tier. The kernel tests use it to run every tier the host has (`every_tier` below).
//!
//! The tiers of one architecture are ordered: each includes the ones below it, as the CPUs
//! that have them do (every CPU with AVX512-BF16 also has VNNI; every AMX CPU has both).

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Plain Rust: the reference every other tier is tested against.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C (Haswell and later, AMD Zen 1–3): 16 registers of 8 f32.
    Avx2,
    /// AVX-512 F, BW and VL (Skylake-SP): 32 registers of 16 f32.
    Avx512,
    /// AVX-512 with VNNI (`vpdpbusd`: 64 byte products per instruction; Cascade Lake, Ice Lake).
    Avx512Vnni,
    /// AVX-512 with VNNI and BF16 (`vdpbf16ps`: 32 bf16 products per instruction; Cooper Lake,
    /// AMD Zen 4 and Zen 5).
    Avx512Bf16,
    /// AMX tiles (`tdpbf16ps`: 16×32 by 32×16 bf16 per instruction; Sapphire Rapids and later),
    /// with everything above.
    Amx,
    /// AArch64's Advanced SIMD (part of the base architecture): 4 f32 lanes.
    Neon,
    /// AArch64 with the dot-product instructions (`sdot`; Armv8.2 and later).
    NeonDot,
}

impl Tier {
    /// The tiers of this build's architecture, lowest first.
    pub const fn of_this_arch() -> &'static [Tier] {
        #[cfg(target_arch = "x86_64")]
        {
            &[
                Tier::Scalar,
                Tier::Avx2,
                Tier::Avx512,
                Tier::Avx512Vnni,
                Tier::Avx512Bf16,
                Tier::Amx,
            ]
        }
        #[cfg(target_arch = "aarch64")]
        {
            &[Tier::Scalar, Tier::Neon, Tier::NeonDot]
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            &[Tier::Scalar]
        }
    }

    /// The name `DEEPSEEK_ISA` and `--isa` take.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Scalar => "scalar",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
            Tier::Avx512Vnni => "avx512-vnni",
            Tier::Avx512Bf16 => "avx512-bf16",
            Tier::Amx => "amx",
            Tier::Neon => "neon",
            Tier::NeonDot => "neon-dot",
        }
    }

    /// A tier of this architecture by its [`name`](Tier::name); the error lists the names.
    pub fn parse(name: &str) -> Result<Tier, String> {
        Tier::of_this_arch()
            .iter()
            .copied()
            .find(|t| t.name() == name.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                let names: Vec<&str> = Tier::of_this_arch().iter().map(|t| t.name()).collect();
                format!(
                    "unknown instruction-set tier {name:?} (this build knows: {})",
                    names.join(", ")
                )
            })
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The highest tier this CPU (and, for AMX, the operating system) supports, detected once.
pub fn host() -> Tier {
    static HOST: OnceLock<Tier> = OnceLock::new();
    *HOST.get_or_init(detect)
}

/// Every tier this CPU supports, lowest first.
pub fn host_tiers() -> Vec<Tier> {
    Tier::of_this_arch()
        .iter()
        .copied()
        .filter(|&t| t <= host())
        .collect()
}

static ACTIVE: OnceLock<Tier> = OnceLock::new();

/// Sets the cap on the tier before any kernel runs (the CLI's `--isa`); `None` reads
/// `DEEPSEEK_ISA`. A cap above the host's tier is the host's tier. Errors on an unknown name
/// in `DEEPSEEK_ISA`, or when the kernels already chose their tier.
pub fn init(cap: Option<Tier>) -> Result<Tier, String> {
    let cap = match cap {
        Some(t) => Some(t),
        None => cap_from_env()?,
    };
    let tier = cap.map_or(host(), |c| c.min(host()));
    ACTIVE
        .set(tier)
        .map_err(|_| "the instruction-set tier was already chosen".to_string())?;
    Ok(tier)
}

/// The tier the kernels run at: the host's, capped by [`init`] or `DEEPSEEK_ISA` (an unknown
/// name there is ignored here; the CLI reports it through [`init`]). `DEEPSEEK_AMX=0` is the
/// older spelling of a cap at `avx512-bf16`.
pub fn active() -> Tier {
    *ACTIVE.get_or_init(|| {
        let cap = cap_from_env().ok().flatten();
        cap.map_or(host(), |c| c.min(host()))
    })
}

/// Whether the active tier includes `t` (always false for another architecture's tiers).
#[inline]
pub fn at_least(t: Tier) -> bool {
    Tier::of_this_arch().contains(&t) && active() >= t
}

fn cap_from_env() -> Result<Option<Tier>, String> {
    let mut cap = match std::env::var("DEEPSEEK_ISA") {
        Ok(v) if !v.trim().is_empty() => {
            Some(Tier::parse(&v).map_err(|e| format!("DEEPSEEK_ISA: {e}"))?)
        }
        _ => None,
    };
    if std::env::var("DEEPSEEK_AMX").is_ok_and(|v| v == "0") && cfg!(target_arch = "x86_64") {
        cap = Some(cap.map_or(Tier::Avx512Bf16, |c| c.min(Tier::Avx512Bf16)));
    }
    Ok(cap)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Tier {
    let f = |name: &str| match name {
        "avx2" => is_x86_feature_detected!("avx2"),
        "fma" => is_x86_feature_detected!("fma"),
        "f16c" => is_x86_feature_detected!("f16c"),
        "avx512f" => is_x86_feature_detected!("avx512f"),
        "avx512bw" => is_x86_feature_detected!("avx512bw"),
        "avx512vl" => is_x86_feature_detected!("avx512vl"),
        "avx512vnni" => is_x86_feature_detected!("avx512vnni"),
        "avx512bf16" => is_x86_feature_detected!("avx512bf16"),
        _ => unreachable!(),
    };
    let all = |names: &[&str]| names.iter().all(|&n| f(n));
    if !all(&["avx2", "fma", "f16c"]) {
        return Tier::Scalar;
    }
    if !all(&["avx512f", "avx512bw", "avx512vl"]) {
        return Tier::Avx2;
    }
    if !f("avx512vnni") {
        return Tier::Avx512;
    }
    if !f("avx512bf16") {
        return Tier::Avx512Vnni;
    }
    if !amx::detect_and_enable() {
        return Tier::Avx512Bf16;
    }
    Tier::Amx
}

#[cfg(target_arch = "aarch64")]
fn detect() -> Tier {
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        Tier::NeonDot
    } else {
        Tier::Neon
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect() -> Tier {
    Tier::Scalar
}

/// AMX is both a CPU feature and an operating-system grant.
#[cfg(target_arch = "x86_64")]
mod amx {
    pub fn detect_and_enable() -> bool {
        // CPUID.(EAX=7,ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
            return false;
        }
        request_tile_state()
    }

    /// Linux hands out the (8 KiB) tile register state only on request:
    /// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, once per process.
    #[cfg(target_os = "linux")]
    fn request_tile_state() -> bool {
        use std::arch::asm;
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: a plain syscall with integer arguments; it changes only this process's
        // permission to use the tile state.
        unsafe {
            asm!("syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _, lateout("r11") _,
                options(nostack));
        }
        ret == 0
    }

    #[cfg(not(target_os = "linux"))]
    fn request_tile_state() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_listed() {
        for &t in Tier::of_this_arch() {
            assert_eq!(Tier::parse(t.name()), Ok(t));
        }
        let err = Tier::parse("sse9").unwrap_err();
        assert!(err.contains("sse9") && err.contains("scalar"), "{err}");
        assert!(host_tiers().contains(&Tier::Scalar) && host_tiers().contains(&host()));
        assert!(active() <= host());
    }

    /// Runs this crate's other tests again once for every tier below the host's (each in a
    /// fresh process of this test binary with `DEEPSEEK_ISA` set, as the tier is chosen once
    /// per process), so every kernel path the dispatch can take is tested on this machine, not
    /// only the best one. Prints which tiers ran and which this CPU lacks. Only the outer run
    /// (no `DEEPSEEK_ISA` set) spawns.
    #[test]
    fn every_tier() {
        use std::io::Write;
        if std::env::var_os("DEEPSEEK_ISA").is_some_and(|v| !v.is_empty()) {
            return;
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut ran = vec![format!("{} (this run)", active())];
        let mut failed = vec![];
        let mut not_started = vec![];
        for &t in Tier::of_this_arch().iter().filter(|&&t| t < active()) {
            let out = std::process::Command::new(&exe)
                .args(["--skip", "tier::tests::every_tier", "--test-threads", "2"])
                .env("DEEPSEEK_ISA", t.name())
                .env_remove("DEEPSEEK_AMX")
                .output();
            match out {
                Ok(o) if o.status.success() => ran.push(t.name().to_string()),
                Ok(o) => failed.push(format!(
                    "--- {t} ({}) ---\n{}{}",
                    o.status,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )),
                // Where this binary cannot start itself again (QEMU user mode without a binfmt
                // handler) the script that runs it there sets `DEEPSEEK_ISA` per run instead.
                Err(e) => not_started.push(format!("{t} ({e})")),
            }
        }
        let lacking: Vec<&str> = Tier::of_this_arch()
            .iter()
            .filter(|&&t| t > host())
            .map(|t| t.name())
            .collect();
        // Straight to the stream, past the test harness's capture: the tiers are part of the
        // suite's report whether or not it passes.
        let mut line = format!("kernel tests ran at tiers: {}", ran.join(", "));
        if !lacking.is_empty() {
            line += &format!("; skipped (this CPU lacks them): {}", lacking.join(", "));
        }
        if !not_started.is_empty() {
            line += &format!("; not started: {}", not_started.join(", "));
        }
        let _ = writeln!(std::io::stderr(), "\n{line}");
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }
}

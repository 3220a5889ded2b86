//! The kernels compile with NVRTC, the compiler the GPU path uses at load, for the GPUs we
//! target, wherever libnvrtc loads: on GPU machines, and on CPU machines where scripts/test.sh
//! puts PyPI's `nvidia-cuda-nvrtc` on the library path (`DEEPSEEK_REQUIRE_NVRTC=1` makes its
//! absence a failure there). Elsewhere, one SKIPPED line.

use deepseek_cuda::source;

#[test]
fn every_kernel_compiles_for_ampere_and_hopper() {
    if !source::nvrtc_available() {
        if std::env::var("DEEPSEEK_REQUIRE_NVRTC").as_deref() == Ok("1") {
            panic!("DEEPSEEK_REQUIRE_NVRTC=1 but libnvrtc.so.13 does not load (LD_LIBRARY_PATH?)");
        }
        eprintln!("SKIPPED: compiling the CUDA kernels: libnvrtc.so.13 is not on the library path");
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        let ptx = match source::compile(arch) {
            Ok(p) => p.to_src(),
            Err(e) => panic!("{e}"),
        };
        for k in source::KERNELS {
            assert!(
                ptx.contains(&format!(".entry {k}(")),
                "{arch}: kernel {k} missing from the PTX"
            );
        }
        assemble(arch, &ptx);
    }
}

/// Where DEEPSEEK_PTXAS names ptxas: assembles the PTX for `arch` as the driver would at load
/// (catching what PTX alone does not: shared memory over the limit, bad instructions for the
/// GPU) and prints each kernel's registers, shared memory and spills.
fn assemble(arch: &str, ptx: &str) {
    let Ok(ptxas) = std::env::var("DEEPSEEK_PTXAS") else {
        eprintln!("SKIPPED: assembling the PTX for {arch}: DEEPSEEK_PTXAS is not set");
        return;
    };
    let dir = std::env::temp_dir().join(format!("deepseek-ptxas-{}-{arch}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, out) = (dir.join("kernels.ptx"), dir.join("kernels.cubin"));
    std::fs::write(&src, ptx).unwrap();
    let run = std::process::Command::new(&ptxas)
        .args(["-v", &format!("-arch={arch}"), "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("running {ptxas}: {e}"));
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "ptxas {arch} failed:\n{log}");
    eprintln!("ptxas {arch}:\n{log}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_compile_error_names_the_file_and_line() {
    if !source::nvrtc_available() {
        eprintln!("SKIPPED: compiling the CUDA kernels: libnvrtc.so.13 is not on the library path");
        return;
    }
    // The program as shipped, plus a broken kernel in a file of its own.
    let broken = format!(
        "{}#line 1 \"broken.cu\"\nextern \"C\" __global__ void broken() {{ undeclared_thing(); }}\n",
        source::program()
    );
    let e = cudarc::nvrtc::compile_ptx(broken).unwrap_err();
    let log = format!("{e:?}");
    assert!(
        log.contains("broken.cu") && log.contains("undeclared_thing"),
        "{log}"
    );
}

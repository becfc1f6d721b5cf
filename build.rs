//! Build script: compiles every `kernels/*.cu` with nvcc to cubin (sm_80, sm_90) and PTX
//! (compute_90), and generates `$OUT_DIR/kernels.rs` with the embedded images and, per kernel
//! file, a module of constants naming its `extern "C" __global__` functions, so that a kernel
//! name used by the CUDA backend is checked when the crate compiles, not when a GPU runs it.
//!
//! nvcc is looked up in `NVCC`, `CUDA_HOME`/`CUDA_PATH` (`bin/nvcc`), `PATH`, then the
//! project's pinned toolchain `.cuda-venv` (see `scripts/install-cuda-toolchain.sh`).
//! Without nvcc (or with `PRRNET_NO_NVCC=1`) the crate builds CPU-only with a warning, unless
//! `PRRNET_REQUIRE_KERNELS=1`, which makes that an error. `PRRNET_PTXAS_VERBOSE=1` prints ptxas
//! register/spill reports as cargo warnings.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Real architectures we ship cubin for; PTX for `PTX_ARCH` covers anything newer.
const CUBIN_ARCHS: [u32; 2] = [80, 90];
const PTX_ARCH: u32 = 90;

struct KernelFile {
    stem: String,
    path: PathBuf,
    functions: Vec<String>,
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let kdir = manifest.join("kernels");

    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "PRRNET_NO_NVCC",
        "PRRNET_REQUIRE_KERNELS",
        "PRRNET_PTXAS_VERBOSE",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    // A missing watched path makes cargo rerun this script on every build, so only existing
    // paths are watched: the pinned toolchain's `lib` folder (its python3.X entry appears when
    // the toolchain is installed) and the nvcc that is used.
    if manifest.join(".cuda-venv").join("lib").is_dir() {
        println!("cargo:rerun-if-changed=.cuda-venv/lib");
    }

    let files = kernel_files(&kdir);
    let require = flag("PRRNET_REQUIRE_KERNELS");
    let nvcc = if flag("PRRNET_NO_NVCC") {
        None
    } else {
        find_nvcc(&manifest)
    };

    let compiled = match &nvcc {
        Some(nvcc) => {
            println!("cargo:rerun-if-changed={}", nvcc.display());
            compile_all(nvcc, &kdir, &out, &files);
            true
        }
        None => {
            if require {
                panic!(
                    "PRRNET_REQUIRE_KERNELS=1 but no nvcc is usable (PRRNET_NO_NVCC=1, or none at $NVCC, \
                     $CUDA_HOME/bin/nvcc, $CUDA_PATH/bin/nvcc, PATH and \
                     .cuda-venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc); \
                     run `bash scripts/install-cuda-toolchain.sh` or set NVCC"
                );
            }
            println!(
                "cargo:warning=nvcc not found: building without CUDA kernels (CPU only). \
                 Run `bash scripts/install-cuda-toolchain.sh` or set NVCC to embed them."
            );
            false
        }
    };
    let generated = generate(&files, &out, compiled);
    fs::write(out.join("kernels.rs"), generated).expect("write kernels.rs");
}

fn flag(name: &str) -> bool {
    matches!(env::var(name).as_deref(), Ok("1") | Ok("true") | Ok("yes"))
}

/// Every `kernels/*.cu`, sorted, with the kernel names it defines; `rerun-if-changed` for each
/// `.cu` and `.cuh`.
fn kernel_files(kdir: &Path) -> Vec<KernelFile> {
    let mut files = Vec::new();
    let Ok(entries) = fs::read_dir(kdir) else {
        return files;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "cu" || ext == "cuh" {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        if ext != "cu" {
            continue;
        }
        let src = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "kernel file name {stem:?} must be a Rust identifier"
        );
        files.push(KernelFile {
            stem,
            functions: kernel_names(&src),
            path,
        });
    }
    files
}

/// Names of `extern "C" __global__ void NAME(` definitions (whitespace-tolerant, on one line;
/// `__launch_bounds__(...)` before or after `void` is allowed).
fn kernel_names(src: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in src.lines() {
        let l = line.trim_start();
        if l.starts_with("//") {
            continue;
        }
        let Some(rest) = l.strip_prefix("extern \"C\"") else {
            continue;
        };
        let rest = rest.trim_start();
        let Some(rest) = rest.strip_prefix("__global__") else {
            continue;
        };
        let Some(rest) = skip_launch_bounds(rest.trim_start()).strip_prefix("void") else {
            continue;
        };
        let rest = skip_launch_bounds(rest.trim_start());
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && rest[name.len()..].trim_start().starts_with('(') {
            assert!(!names.contains(&name), "kernel {name} defined twice");
            names.push(name);
        }
    }
    names
}

fn skip_launch_bounds(s: &str) -> &str {
    match s.strip_prefix("__launch_bounds__") {
        Some(r) => {
            let close = r.find(')').expect("__launch_bounds__ without ')'");
            r[close + 1..].trim_start()
        }
        None => s,
    }
}

fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    let exe = |p: PathBuf| p.is_file().then_some(p);
    if let Some(p) = env::var_os("NVCC") {
        // An explicit NVCC wins, even when it does not exist (that is how to hide nvcc).
        return exe(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            if let Some(p) = exe(PathBuf::from(home).join("bin").join("nvcc")) {
                return Some(p);
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            if let Some(p) = exe(dir.join("nvcc")) {
                return Some(p);
            }
        }
    }
    let lib = manifest.join(".cuda-venv").join("lib");
    let mut pythons: Vec<PathBuf> = fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python3"))
        })
        .collect();
    pythons.sort();
    pythons.into_iter().rev().find_map(|py| {
        exe(py
            .join("site-packages")
            .join("nvidia")
            .join("cu13")
            .join("bin")
            .join("nvcc"))
    })
}

/// Compile every file for every target, files in parallel; any failure fails the build.
fn compile_all(nvcc: &Path, kdir: &Path, out: &Path, files: &[KernelFile]) {
    let verbose = flag("PRRNET_PTXAS_VERBOSE");
    let results: Vec<Result<Vec<String>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|f| s.spawn(move || compile_file(nvcc, kdir, out, f, verbose)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("compiler thread panicked".into()))
            })
            .collect()
    });
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(reports) => {
                for line in reports {
                    println!("cargo:warning={line}");
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        panic!("CUDA kernel compilation failed:\n{}", errors.join("\n"));
    }
}

fn compile_file(
    nvcc: &Path,
    kdir: &Path,
    out: &Path,
    f: &KernelFile,
    verbose: bool,
) -> Result<Vec<String>, String> {
    let mut reports = Vec::new();
    let mut jobs: Vec<(Vec<String>, PathBuf)> = CUBIN_ARCHS
        .iter()
        .map(|a| {
            (
                vec!["-cubin".to_string(), format!("-arch=sm_{a}")],
                out.join(format!("{}.sm_{a}.cubin", f.stem)),
            )
        })
        .collect();
    jobs.push((
        vec!["-ptx".to_string(), format!("-arch=compute_{PTX_ARCH}")],
        out.join(format!("{}.compute_{PTX_ARCH}.ptx", f.stem)),
    ));
    for (target, dst) in jobs {
        let mut cmd = Command::new(nvcc);
        cmd.args(&target)
            .args(["-O3", "--std=c++17", "-Werror", "all-warnings", "-lineinfo"])
            .arg("-I")
            .arg(kdir)
            .arg("-o")
            .arg(&dst)
            .arg(&f.path);
        let is_cubin = target[0] == "-cubin";
        if verbose && is_cubin {
            cmd.args(["-Xptxas", "-v"]);
        }
        let output = cmd
            .output()
            .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(format!(
                "{} ({}) failed:\n{}{}",
                f.path.display(),
                target.join(" "),
                String::from_utf8_lossy(&output.stdout),
                stderr
            ));
        }
        if verbose && is_cubin {
            for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
                reports.push(format!("[{} {}] {}", f.stem, target[1], line.trim()));
            }
        }
    }
    Ok(reports)
}

fn generate(files: &[KernelFile], out: &Path, compiled: bool) -> String {
    let mut g = String::new();
    let _ = writeln!(g, "// Generated by build.rs; do not edit.");
    let _ = writeln!(
        g,
        "/// Whether this build embeds compiled CUDA kernels (nvcc was found at build time)."
    );
    let _ = writeln!(g, "pub const KERNELS_EMBEDDED: bool = {compiled};");
    let _ = writeln!(g, "/// All kernel files, in name order.");
    let _ = writeln!(g, "pub static KERNEL_FILES: &[KernelImage] = &[");
    for f in files {
        let _ = writeln!(g, "    KernelImage {{");
        let _ = writeln!(g, "        file: {:?},", f.stem);
        if compiled {
            let _ = writeln!(g, "        cubins: &[");
            for a in CUBIN_ARCHS {
                let p = out.join(format!("{}.sm_{a}.cubin", f.stem));
                let _ = writeln!(
                    g,
                    "            ({a}, include_bytes!({:?})),",
                    p.display().to_string()
                );
            }
            let _ = writeln!(g, "        ],");
            let p = out.join(format!("{}.compute_{PTX_ARCH}.ptx", f.stem));
            let _ = writeln!(
                g,
                "        ptx: include_str!({:?}),",
                p.display().to_string()
            );
            let _ = writeln!(g, "        ptx_arch: {PTX_ARCH},");
        } else {
            let _ = writeln!(g, "        cubins: &[],");
            let _ = writeln!(g, "        ptx: \"\",");
            let _ = writeln!(g, "        ptx_arch: 0,");
        }
        let _ = writeln!(g, "        functions: &{:?},", f.functions);
        let _ = writeln!(g, "    }},");
    }
    let _ = writeln!(g, "];");
    let _ = writeln!(
        g,
        "/// Kernel names, one module per kernel file: using a name that the file does not define \
         is a compile error."
    );
    let _ = writeln!(g, "#[allow(dead_code)]");
    let _ = writeln!(g, "pub mod names {{");
    for (idx, f) in files.iter().enumerate() {
        let _ = writeln!(g, "    #[allow(dead_code)]");
        let _ = writeln!(g, "    pub mod {} {{", f.stem);
        let _ = writeln!(g, "        /// Index of this file in `KERNEL_FILES`.");
        let _ = writeln!(g, "        pub const FILE: usize = {idx};");
        for name in &f.functions {
            let _ = writeln!(
                g,
                "        pub const {}: (usize, &str) = ({idx}, {name:?});",
                name.to_ascii_uppercase()
            );
        }
        let _ = writeln!(g, "    }}");
    }
    let _ = writeln!(g, "}}");
    g
}

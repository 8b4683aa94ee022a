//! Binds to the system DPDK found by pkg-config and compiles the hot-path shim.

use std::env;
use std::path::PathBuf;
use std::process::exit;

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=shim.h");
    println!("cargo:rerun-if-changed=shim.c");

    // One clear line instead of a page of bindgen errors when DPDK is not installed.
    let dpdk = match pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or_default().to_owned();
            eprintln!(
                "error: DPDK >= 22.11 development files not found ({first}); run `sudo ./scripts/setup`"
            );
            exit(1);
        }
    };

    // All of DPDK's cflags, -march included: without it the always-inline intrinsics in
    // rte_rdtsc and the rx/tx burst paths do not compile.
    let cflags = pkg_config::get_variable("libdpdk", "cflags").ok();
    let cflags: Vec<String> = match cflags {
        Some(s) if !s.is_empty() => s.split_whitespace().map(str::to_owned).collect(),
        _ => cflags_from_pkg_config(),
    };

    let mut build = cc::Build::new();
    build.file("shim.c").opt_level(3).warnings(false);
    // cpu_set_t (rte_lcore_cpuset) is a GNU extension.
    build.define("_GNU_SOURCE", None);
    for flag in &cflags {
        build.flag(flag);
    }
    build.compile("qosgw_dpdk_shim");

    let mut clang_args: Vec<String> = dpdk
        .include_paths
        .iter()
        .map(|p| format!("-I{}", p.display()))
        .collect();
    clang_args.extend(cflags.iter().filter(|f| !f.starts_with("-march")).cloned());

    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(&clang_args)
        .allowlist_function("rte_.*|qosgw_.*")
        .allowlist_type("rte_.*")
        .allowlist_var("RTE_.*")
        // Its bitfields defeat bindgen's Debug derive.
        .opaque_type("rte_gtp_psc_generic_hdr")
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate();
    let bindings = match bindings {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "error: bindgen failed on the DPDK headers ({e}); run `sudo ./scripts/setup`"
            );
            exit(1);
        }
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs to OUT_DIR");
}

/// `pkg-config --cflags libdpdk`, split on whitespace.
fn cflags_from_pkg_config() -> Vec<String> {
    let out = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        _ => {
            eprintln!("error: `pkg-config --cflags libdpdk` failed; run `sudo ./scripts/setup`");
            exit(1);
        }
    }
}

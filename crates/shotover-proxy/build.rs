//! Link-time settings of the proxy binary.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=text-order.txt");
    println!("cargo:rerun-if-env-changed=SHOTOVER_NO_TEXT_ORDER");
    let env = |key: &str| std::env::var(key).unwrap_or_default();
    if env("CARGO_CFG_TARGET_OS") != "linux"
        || env("CARGO_CFG_TARGET_ARCH") != "x86_64"
        || env("CARGO_CFG_TARGET_ENV") != "gnu"
    {
        // Both settings below are only known to work on x86_64 Linux with glibc.
        return;
    }
    // Relative relocations packed as DT_RELR (glibc 2.36, binutils 2.38 or later): the
    // position-independent binary has about 34,000 of them, 820 KB as plain RELA entries, which
    // the dynamic loader reads in full at every start, so they stayed resident for the process's
    // whole life. Packed, they take a few KB.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");

    // The functions a running proxy executes, placed together at the start of `.text` (the
    // list is made by `scripts/text-order`). Spread over 15 MB of code, the ~800 KB of them
    // made the kernel map 5.6 MiB of the binary: each page fault on code maps the 64 KiB around
    // it. Packed, 1.4 MiB. Only lld (rustc's default linker here since 1.90) reads the list;
    // names that no longer exist are skipped without a word, so a stale list costs memory,
    // never a build.
    let order = Path::new(&env("CARGO_MANIFEST_DIR")).join("text-order.txt");
    if order.is_file() && env("SHOTOVER_NO_TEXT_ORDER").is_empty() && links_with_lld(&env) {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", order.display());
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether rustc links with its bundled lld: its default on x86_64 Linux since 1.90, unless
/// RUSTFLAGS picks a linker or linker features of its own.
fn links_with_lld(env: &impl Fn(&str) -> String) -> bool {
    let flags = env("CARGO_ENCODED_RUSTFLAGS");
    if flags.contains("linker") || flags.contains("fuse-ld") {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-vV").output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    let version: Vec<u32> = text
        .lines()
        .find_map(|l| l.strip_prefix("release: "))
        .map(|v| v.split(['.', '-']).take(2).filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    matches!(version.as_slice(), [1, minor] if *minor >= 90) || version.first().is_some_and(|major| *major > 1)
}

//! Link-time settings of the proxy binary.

fn main() {
    // Relative relocations packed as DT_RELR (glibc 2.36, binutils 2.38 or later): the
    // position-independent binary has about 34,000 of them, 820 KB as plain RELA entries, which
    // the dynamic loader reads in full at every start, so they stayed resident for the process's
    // whole life. Packed, they take a few KB. x86_64 Linux with glibc only, where both tools
    // are known.
    println!("cargo:rerun-if-changed=build.rs");
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") == "linux"
        && target("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && target("CARGO_CFG_TARGET_ENV") == "gnu"
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

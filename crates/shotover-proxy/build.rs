//! Link-time settings of the proxy binary.

fn main() {
    // Relative relocations packed as DT_RELR (glibc 2.36, binutils 2.38 or later): the
    // position-independent binary has about 34,000 of them, 820 KB as plain RELA entries, which
    // the dynamic loader reads in full at every start, so they stayed resident for the process's
    // whole life. Packed, they take a few KB. x86_64 Linux only, where both tools are known.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64")
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

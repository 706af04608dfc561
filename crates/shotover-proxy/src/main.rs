//! The `shotover-proxy` binary: the built-in transforms and the shared command line.

fn main() {
    shotover::cli::run_main(shotover::transforms::registry());
}

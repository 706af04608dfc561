//! A shotover-proxy build with one extra transform, ValkeyGetRewrite.

fn main() {
    let mut registry = shotover::transforms::registry();
    registry.register::<valkey_get_rewrite::ValkeyGetRewriteConfig>();
    shotover::cli::run_main(registry);
}

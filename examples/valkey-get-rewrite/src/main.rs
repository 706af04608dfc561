//! A shotover-proxy build with one extra transform, ValkeyGetRewrite.

fn main() {
    let mut registry = shotover::transforms::registry();
    shotover::import_transform!(registry, valkey_get_rewrite::ValkeyGetRewriteConfig, "ValkeyGetRewrite");
    shotover::cli::run_main(registry);
}

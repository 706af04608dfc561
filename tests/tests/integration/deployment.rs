//! The systemd unit in config/ is valid and pins what it starts.

use shotover_integration_tests::*;
use std::path::Path;

#[test]
fn systemd_unit_verifies_and_its_affinity_covers_the_cores_it_names() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let unit = std::fs::read_to_string(root.join("config/shotover-proxy.service")).unwrap();

    // CPUAffinity must hold every worker core and the control core.
    let value = |key: &str| unit.lines().find_map(|l| l.trim().strip_prefix(key)).map(|v| v.trim().to_string());
    let affinity = shotover_executor::cores::parse_cpu_list(&value("CPUAffinity=").unwrap()).unwrap();
    let start: Vec<&str> = unit
        .lines()
        .skip_while(|l| !l.starts_with("ExecStart="))
        .take_while(|l| l.ends_with('\\') || l.starts_with("ExecStart=") || l.starts_with("    "))
        .collect();
    let start = start.join(" ");
    let arg = |flag: &str| start.split_whitespace().skip_while(|w| *w != flag).nth(1).map(str::to_string);
    let workers = shotover_executor::cores::parse_cpu_list(&arg("--worker-cores").unwrap()).unwrap();
    let control: usize = arg("--control-core").unwrap().parse().unwrap();
    assert!(workers.iter().chain([&control]).all(|c| affinity.contains(c)), "{affinity:?} {workers:?} {control}");
    assert!(unit.contains("LimitNOFILE=") && unit.contains("LimitMEMLOCK=") && unit.contains("Restart=on-failure"));

    if std::process::Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("skipped systemd-analyze verify: not installed");
        return;
    }
    // Verify a copy that points at the binary just built and runs as an existing user.
    let dir = TempDir::new("unit");
    let copy = unit
        .replace("/opt/shotover/shotover-proxy", &shotover_bin().display().to_string())
        .replace("User=shotover", "User=root")
        .replace("Group=shotover", "Group=root");
    let path = dir.path("shotover-proxy.service");
    std::fs::write(&path, copy).unwrap();
    let (status, out) = run_tool("systemd-analyze", &["verify", &path.display().to_string()]);
    assert!(status.success() && out.trim().is_empty(), "{out}");
}

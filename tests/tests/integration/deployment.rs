//! The systemd unit in config/ is valid, pins what it starts, and is set up for hot reload.

use shotover_integration_tests::*;
use std::path::Path;

/// The value of `key=` in the unit, with continuation lines (ending in `\`) joined.
fn directive(unit: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    let mut lines = unit.lines().skip_while(|l| !l.starts_with(&prefix));
    let mut value = lines.next()?.strip_prefix(&prefix)?.to_string();
    while let Some(stripped) = value.strip_suffix('\\') {
        value = format!("{stripped} {}", lines.next().unwrap_or_default().trim());
    }
    Some(value.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The word after `flag` in a command line.
fn arg(command: &str, flag: &str) -> Option<String> {
    command.split_whitespace().skip_while(|w| *w != flag).nth(1).map(|w| w.trim_end_matches(['\'', '&']).to_string())
}

#[test]
fn systemd_unit_verifies_and_its_affinity_covers_the_cores_it_names() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let unit = std::fs::read_to_string(root.join("config/shotover-proxy.service")).unwrap();

    // CPUAffinity must hold every worker core and the control core.
    let affinity = shotover_executor::cores::parse_cpu_list(&directive(&unit, "CPUAffinity").unwrap()).unwrap();
    let start = directive(&unit, "ExecStart").unwrap();
    let workers = shotover_executor::cores::parse_cpu_list(&arg(&start, "--worker-cores").unwrap()).unwrap();
    let control: usize = arg(&start, "--control-core").unwrap().parse().unwrap();
    assert!(workers.iter().chain([&control]).all(|c| affinity.contains(c)), "{affinity:?} {workers:?} {control}");
    assert!(unit.contains("LimitNOFILE=") && unit.contains("LimitMEMLOCK=") && unit.contains("Restart=on-failure"));

    // Hot reload: the proxy notifies systemd, and a new instance started by ExecReload (not
    // the main process) must be allowed to send MAINPID.
    assert_eq!(directive(&unit, "Type").as_deref(), Some("notify"));
    assert_eq!(directive(&unit, "NotifyAccess").as_deref(), Some("all"));
    let socket = arg(&start, "--hotreload-socket").expect("ExecStart passes --hotreload-socket");
    let runtime_dir = directive(&unit, "RuntimeDirectory").expect("RuntimeDirectory holds the socket");
    assert!(socket.starts_with(&format!("/run/{runtime_dir}/")), "{socket} is not in /run/{runtime_dir}");
    let reload = directive(&unit, "ExecReload").expect("ExecReload starts the new instance");
    assert_eq!(arg(&reload, "--hotreload-socket").as_deref(), Some(socket.as_str()), "{reload}");
    // Exactly ExecStart's command line, started in the background so that reload returns.
    let background = format!("'{start} &'");
    assert!(reload.ends_with(&background), "ExecReload must run `{start}` in the background: {reload}");

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

//! deploy/ checked offline: the Kubernetes manifests against the Kubernetes schemas
//! (kubernetes-validate), the systemd unit with systemd-analyze, the configuration the
//! manifests carry with latchkey's own checks, and the shutdown budgets of every deployment
//! (grace period above the drain deadline).
//!
//! `scripts/test` installs kubernetes-validate (into target/deploy-venv) and systemd-analyze
//! when they are missing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The venv scripts/test makes, or the environment's own.
fn deploy_venv_tool(name: &str, env: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let venv = repo().join("target/deploy-venv/bin").join(name);
    if venv.exists() {
        return venv;
    }
    let on_path = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .unwrap();
    if on_path.status.success() {
        return PathBuf::from(String::from_utf8(on_path.stdout).unwrap().trim());
    }
    panic!(
        "{name} is not installed: run ./scripts/test, which installs it into target/deploy-venv"
    );
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kubernetes_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The first whole number after `key` in `text`.
fn number_after(text: &str, key: &str) -> u64 {
    let rest = &text[text.find(key).unwrap_or_else(|| panic!("{key} not found")) + key.len()..];
    rest.trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let validate = deploy_venv_tool("kubernetes-validate", "KUBERNETES_VALIDATE");
    let files = kubernetes_files();
    let kinds = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    for kind in [
        "kind: Deployment",
        "kind: Service",
        "kind: ConfigMap",
        "kind: Secret",
        "kind: PodDisruptionBudget",
    ] {
        assert!(kinds.contains(kind), "deploy/kubernetes has no {kind}");
    }
    // An older and the newest schema the validator ships: strict, so unknown fields fail.
    for version in [Some("1.30.0"), None] {
        let mut cmd = Command::new(&validate);
        cmd.arg("--strict");
        if let Some(v) = version {
            cmd.args(["-k", v]);
        }
        cmd.args(&files);
        let (ok, stdout, stderr) = run(&mut cmd);
        assert!(
            ok,
            "kubernetes-validate {version:?} failed:\n{stdout}{stderr}"
        );
        let passed = stdout.matches(" passed for resource ").count()
            + stderr.matches(" passed for resource ").count();
        assert_eq!(passed, 6, "six resources validated:\n{stdout}{stderr}");
    }
}

#[test]
fn the_kubernetes_deployment_drains_within_its_grace_period() {
    let deployment = read("deploy/kubernetes/deployment.yaml");
    assert!(number_after(&deployment, "replicas:") >= 2);
    let grace = number_after(&deployment, "terminationGracePeriodSeconds:");
    let pre_stop = number_after(&deployment, "command: [\"sleep\",");
    let drain = number_after(&deployment, "\"--drain\",");
    assert!(
        grace > pre_stop + drain,
        "grace {grace} s must exceed preStop {pre_stop} s + drain {drain} s"
    );
    for probe in [
        "readinessProbe:",
        "path: /readyz",
        "livenessProbe:",
        "path: /healthz",
    ] {
        assert!(deployment.contains(probe), "{probe} missing");
    }
    for hardening in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
    ] {
        assert!(deployment.contains(hardening), "{hardening} missing");
    }
    let pdb = read("deploy/kubernetes/poddisruptionbudget.yaml");
    assert!(number_after(&pdb, "minAvailable:") >= 1);
}

#[test]
fn the_configmap_holds_a_configuration_latchkey_accepts() {
    let configmap = read("deploy/kubernetes/configmap.yaml");
    let start = configmap
        .find("latchkey.toml: |")
        .expect("latchkey.toml key")
        + 16;
    let toml: String = configmap[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or("")))
        .collect();
    // The Secret provides these two as environment variables.
    let env = [
        ("LATCHKEY_API_TOKEN", "a-route-api-token-for-the-check"),
        ("LATCHKEY_STORE_URL", "redis://:password@redis:6379/0"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let config = latchkey::Config::from_sources(&toml, &env)
        .unwrap_or_else(|p| panic!("the ConfigMap's configuration: {p:?}\n{toml}"));
    assert_eq!(config.listen.port(), 8000);
    assert_eq!(config.api_listen.port(), 8001);
    assert!(
        config.secure_cookies(),
        "behind TLS: Secure, __Host- cookies"
    );
    let deployment = read("deploy/kubernetes/deployment.yaml");
    assert!(
        deployment.contains("containerPort: 8000") && deployment.contains("containerPort: 8001")
    );
}

/// The unit with ExecStart pointing at the binary this build made (verify checks it exists).
fn unit_for_this_build(dir: &Path) -> PathBuf {
    let unit = read("deploy/systemd/latchkey.service")
        .replace("/usr/local/bin/latchkey", env!("CARGO_BIN_EXE_latchkey"));
    let path = dir.join("latchkey.service");
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let dir = std::env::temp_dir().join(format!("latchkey-unit-{}", latchkey::secret::random_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = unit_for_this_build(&dir);

    // Unknown keys and bad values are warnings on stderr with exit status 0: both must be clean.
    let (ok, stdout, stderr) = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
    assert!(
        ok && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stdout}{stderr}"
    );

    let (ok, stdout, stderr) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit));
    assert!(ok, "systemd-analyze security:\n{stdout}{stderr}");
    let exposure: f64 = stdout
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for latchkey.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in\n{stdout}"));
    assert!(
        exposure <= 2.0,
        "exposure {exposure} (0 = locked down, 10 = exposed)"
    );
    let _ = std::fs::remove_dir_all(&dir);

    let text = read("deploy/systemd/latchkey.service");
    let drain = number_after(&text, "--drain");
    let stop = number_after(&text, "TimeoutStopSec=");
    assert!(
        stop > drain,
        "TimeoutStopSec {stop} must exceed --drain {drain}"
    );
    assert!(text.contains("ExecReload=/bin/kill -HUP $MAINPID"));
}

#[test]
fn the_image_runs_unprivileged_and_compose_persists_redis() {
    let dockerfile = read("deploy/Dockerfile");
    assert!(dockerfile.contains("FROM rust:1.95-slim AS builder"));
    assert!(dockerfile.contains("FROM debian:bookworm-slim"));
    assert!(dockerfile.contains("USER 10001:10001"));
    assert!(dockerfile.contains("--locked"));

    // Parsed as YAML by the same venv's Python (PyYAML comes with kubernetes-validate).
    let python = deploy_venv_tool("python", "DEPLOY_PYTHON");
    let (ok, stdout, stderr) = run(Command::new(python)
        .arg("-c")
        .arg("import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))")
        .arg(repo().join("deploy/compose.yaml")));
    assert!(ok, "compose.yaml is not YAML:\n{stderr}");
    let compose: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let services = &compose["services"];
    for name in ["latchkey", "redis", "jupyterlab"] {
        assert!(services[name].is_object(), "compose has no {name} service");
    }
    let redis = services["redis"]["command"].to_string();
    assert!(redis.contains("--appendonly") && redis.contains("yes"));
    assert!(
        services["redis"]["volumes"][0]
            .as_str()
            .unwrap()
            .ends_with(":/data")
    );
    let latchkey = &services["latchkey"];
    assert_eq!(latchkey["build"]["dockerfile"], "deploy/Dockerfile");
    let grace: u64 = latchkey["stop_grace_period"]
        .as_str()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    let command = latchkey["command"].as_array().unwrap();
    let drain: u64 = command
        .iter()
        .skip_while(|a| *a != "--drain")
        .nth(1)
        .and_then(|d| d.as_str()?.parse().ok())
        .unwrap();
    assert!(
        grace > drain,
        "stop_grace_period {grace} s must exceed --drain {drain} s"
    );
    // The route API is published on the loopback interface only.
    let ports: Vec<&str> = latchkey["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(ports.contains(&"127.0.0.1:8001:8001"), "{ports:?}");
}

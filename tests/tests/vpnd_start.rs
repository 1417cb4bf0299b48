//! `vpnd up` with a config that `vpnd check` accepts but the host cannot run: it exits 1
//! naming the cause and leaves nothing of the attempt behind: no control socket, no
//! directory it made for it, no TAP device of a network it had already started. Each
//! test runs the daemon in a namespace of its own. Needs root.

use site_tests::{NetNs, TempDir, bin_path, require_root};

const KEY: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";

/// Runs `vpnd up` in a fresh namespace (after `setup`) with the top-level lines `top`,
/// network 1 on TAP `vpn1` (which can start) and then the tables `networks`, and checks
/// that the start fails with `expect` in its error and leaves nothing behind. Returns the
/// namespace for further checks.
fn start_fails_cleanly(
    tag: &str,
    setup: impl FnOnce(&NetNs),
    top: &str,
    networks: &str,
    expect: &str,
) -> NetNs {
    let ns = NetNs::new(tag);
    setup(&ns);
    let dir = TempDir::new(tag);
    // The socket's directory does not exist yet: vpnd makes it, and must remove it.
    let control = dir.join("run/vpnd/control.sock");
    let config = dir.join("vpnd.toml");
    let text = format!(
        "private_key = \"{KEY}\"\nlisten = [\"127.0.0.1:51820\"]\ncontrol_socket = \"{}\"\n\
         {top}\n[[network]]\nid = 1\ntap = \"vpn1\"\n\n{networks}",
        control.display()
    );
    std::fs::write(&config, text).unwrap();
    let vpnd = bin_path("vpnd");
    let check = ns.run(&[
        vpnd.as_os_str(),
        "check".as_ref(),
        "-c".as_ref(),
        config.as_os_str(),
    ]);
    assert!(check.success, "vpnd check refused it: {}", check.stderr);

    let out = ns.run(&[
        vpnd.as_os_str(),
        "up".as_ref(),
        "-c".as_ref(),
        config.as_os_str(),
    ]);
    assert_eq!(out.code, Some(1), "vpnd up: {}", out.stderr);
    assert!(
        out.stderr.contains(expect),
        "expected {expect:?} in: {}",
        out.stderr
    );
    assert!(!control.exists(), "the control socket was left behind");
    assert!(
        !dir.join("run").exists(),
        "the directory made for the control socket was left behind"
    );
    let links = ns.ip(&["-o", "link", "show"]);
    for tap in ["vpn1", "vpn2"] {
        assert!(
            !links.contains(&format!(": {tap}:")),
            "TAP {tap} was left behind:\n{links}"
        );
    }
    ns
}

#[test]
fn a_missing_bridge_fails_the_start_and_leaves_nothing_behind() {
    if !require_root("a_missing_bridge_fails_the_start_and_leaves_nothing_behind") {
        return;
    }
    start_fails_cleanly(
        "nobridge",
        |_| {},
        "",
        "[[network]]\nid = 2\ntap = \"vpn2\"\nbridge = \"nobr0\"\n",
        "nobr0",
    );
}

#[test]
fn a_tap_name_taken_by_another_interface_fails_the_start_and_leaves_nothing_behind() {
    if !require_root(
        "a_tap_name_taken_by_another_interface_fails_the_start_and_leaves_nothing_behind",
    ) {
        return;
    }
    let ns = start_fails_cleanly(
        "taptaken",
        |ns| {
            ns.add_bridge("taken0");
        },
        "",
        "[[network]]\nid = 2\ntap = \"taken0\"\n",
        "taken0",
    );
    // The other interface is not vpnd's to remove.
    ns.ip(&["link", "show", "taken0"]);
}

#[test]
fn an_unbindable_metrics_address_fails_the_start_and_leaves_nothing_behind() {
    if !require_root("an_unbindable_metrics_address_fails_the_start_and_leaves_nothing_behind") {
        return;
    }
    // No interface of the namespace has this address.
    start_fails_cleanly(
        "badmetrics",
        |_| {},
        "metrics = \"192.0.2.1:9720\"\n",
        "",
        "metrics address 192.0.2.1:9720",
    );
}

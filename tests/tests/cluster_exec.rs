//! `vcluster exec` as a user meets it: a cluster of lightweight nodes at two sites, each
//! node running its node agent; commands go CLI → controller (on the WAN) → each site's
//! host agent → each node's agent, and their output comes back the same way. Needs root;
//! the control plane and the topology clean up after themselves, pass or fail.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use site_tests::cluster::node_agent_pids;
use site_tests::{
    ControlPlane, LinkParams, Overlay, Topology, require_root, unique_name, wait_until,
};
use vcluster::model::{Cluster, Event, Health};

fn two_sites() -> (Topology, Overlay) {
    let topo = Topology::builder()
        .sites(2)
        .vms_per_site(0)
        .link_params(LinkParams::default().delay(Duration::from_millis(5)))
        .build();
    let overlay = Overlay::start_with(&topo, &[], |_, _| {});
    (topo, overlay)
}

/// The last octet of a node's address: each node answers with its own.
fn octet(address: &str) -> i32 {
    address
        .split('/')
        .next()
        .and_then(|a| a.rsplit('.').next())
        .and_then(|o| o.parse().ok())
        .expect("an IPv4 address")
}

/// Processes in a node's namespace other than its agent.
fn others_in(node: &str, agent_pids: &[u32]) -> Vec<u32> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", node])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| !agent_pids.contains(p))
        .collect()
}

#[test]
fn exec_runs_on_each_node_folds_alike_output_and_reports_every_end() {
    let test = "exec_runs_on_each_node_folds_alike_output_and_reports_every_end";
    if !require_root(test) {
        return;
    }
    let (topo, overlay) = two_sites();
    let plane = ControlPlane::start(&topo, &overlay);
    let name = unique_name("x");
    let c: Cluster = plane.create_cluster(&json!({
        "name": name,
        "sites": [{"site": "site1", "nodes": 3}, {"site": "site2", "nodes": 3}],
        "node_memory_mib": 64,
        // Monitoring alone here: tests/cluster_recovery.rs brings nodes back.
        "recovery": "off",
    }));
    assert_eq!(c.nodes.len(), 6);
    assert_eq!(node_agent_pids(&c).len(), 6, "one node agent per node");
    let all = format!("{name}-node-[1-6]");
    // Monitoring: each node's agent answers its host's heartbeat (1 s here).
    wait_until(
        "every node is up with figures",
        Duration::from_secs(10),
        || {
            plane.cluster(&name).nodes.iter().all(|n| {
                n.health.as_ref().is_some_and(|h| {
                    h.health == Health::Up && h.load1.is_some() && h.memory_total_bytes > Some(0)
                })
            })
        },
    );

    // Live: every line prefixed by its node, and each ran in its own namespace.
    let started = Instant::now();
    let out = plane.cli(&[
        "exec",
        &all,
        "--",
        "ip -o -4 addr show dev eth0 | awk '{print $4}'",
    ]);
    let took = started.elapsed();
    assert!(out.success, "{out:?}");
    for n in &c.nodes {
        let want = format!("{}: {}", n.name, n.address);
        assert!(
            out.stdout.lines().any(|l| l == want),
            "no {want:?} in {:?}",
            out.stdout
        );
    }
    eprintln!("exec on 6 nodes at 2 sites: {:.2} s", took.as_secs_f64());

    // Gathered: six identical outputs fold into one block under the node set.
    let out = plane.cli(&["exec", "-b", &all, "--", "echo", "same", "text"]);
    assert!(out.success, "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("{all} (6)\n---------------\nsame text\n")),
        "{}",
        out.stdout
    );
    // Different outputs: a block each; stderr is not gathered.
    let out = plane.cli(&[
        "exec",
        "-b",
        "@all",
        "-c",
        &name,
        "--",
        "echo warn >&2; ip -o -4 addr show dev eth0 | grep -c inet",
    ]);
    assert!(out.success, "{out:?}");
    assert!(
        out.stdout.contains(&format!("{all} (6)\n")),
        "{}",
        out.stdout
    );
    assert_eq!(out.stderr.matches(": warn").count(), 6, "{}", out.stderr);

    // -S: the largest remote exit code (each node exits with its address's last octet).
    let max = c.nodes.iter().map(|n| octet(&n.address)).max().unwrap();
    let out = plane.cli(&[
        "exec",
        "-S",
        &all,
        "--",
        "exit $(ip -o -4 addr show dev eth0 | awk '{print $4}' | cut -d/ -f1 | cut -d. -f4)",
    ]);
    assert_eq!(out.code, Some(max), "{out:?}");
    // Without -S, nodes that all ran make 0 whatever their codes.
    let out = plane.cli(&["exec", &all, "--", "exit 3"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stderr.matches("exited with exit code 3").count(), 6);

    // -x leaves nodes out; @site picks a site's nodes.
    let out = plane.cli(&[
        "exec",
        "-c",
        &name,
        "@site:site2",
        "-x",
        &format!("{name}-node-5"),
        "--",
        "echo",
        "hi",
    ]);
    assert!(out.success, "{out:?}");
    let ran: Vec<&str> = out.stdout.lines().collect();
    let site2: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| n.site == "site2" && n.name != format!("{name}-node-5"))
        .map(|n| format!("{}: hi", n.name))
        .collect();
    assert_eq!(ran.len(), site2.len(), "{out:?}");
    for want in &site2 {
        assert!(ran.contains(&want.as_str()), "{out:?}");
    }

    // A command past its timeout is killed, with what it started.
    let started = Instant::now();
    let out = plane.cli(&[
        "exec",
        "-u",
        "1",
        &format!("{name}-node-[1-2]"),
        "--",
        "sleep 60 & sleep 60",
    ]);
    assert!(started.elapsed() < Duration::from_secs(20), "{out:?}");
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr.matches("command timeout").count(), 2, "{out:?}");
    // Killed before the timeout was reported; an orphan may take a moment to be reaped.
    let agents = node_agent_pids(&c);
    wait_until(
        "what the timed-out command started is gone",
        Duration::from_secs(5),
        || {
            [1, 2]
                .iter()
                .all(|n| others_in(&format!("{name}-node-{n}"), &agents).is_empty())
        },
    );

    // copy: a binary file to every node, whole and with its mode; rcopy: a file from each
    // node, saved under the node's name (/proc/net/dev is each node's own).
    let src = topo.dir().join("payload.bin");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&src, &payload).unwrap();
    let dest = format!("/tmp/{name}-copied/payload.bin");
    let out = plane.cli(&[
        "copy",
        "--mode",
        "640",
        &all,
        &src.display().to_string(),
        &dest,
    ]);
    assert!(out.success, "{out:?}");
    assert!(
        out.stdout.contains(&format!("copied to {all} (6)")),
        "{out:?}"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), payload);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
    let _ = std::fs::remove_dir_all(format!("/tmp/{name}-copied"));
    let back = topo.dir().join("rcopy");
    std::fs::create_dir_all(&back).unwrap();
    let out = plane.cli(&[
        "rcopy",
        &format!("{name}-node-[1-3]"),
        "/proc/net/dev",
        &back.display().to_string(),
    ]);
    assert!(out.success, "{out:?}");
    for i in 1..=3 {
        let got = std::fs::read_to_string(back.join(format!("dev.{name}-node-{i}"))).unwrap();
        assert!(got.contains("eth0:") && got.contains("lo:"), "{got}");
    }
    let out = plane.cli(&[
        "rcopy",
        &format!("{name}-node-1"),
        "/nonexistent/file",
        &back.display().to_string(),
    ]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("not saved"), "{out:?}");

    // Bad input runs nothing and names what is wrong.
    let marker = format!("/tmp/{name}-ran");
    let out = plane.cli(&[
        "exec",
        &format!("{name}-node-[1-2,99]"),
        "--",
        &format!("touch {marker}"),
    ]);
    assert!(!out.success);
    assert!(
        out.stderr.contains(&format!("{name}-node-99")) && out.stderr.contains("nothing was run"),
        "{out:?}"
    );
    assert!(!std::path::Path::new(&marker).exists(), "a node ran it");
    let out = plane.cli(&[
        "exec",
        "-c",
        &name,
        &format!("{name}-node-[1-"),
        "--",
        "true",
    ]);
    assert!(!out.success);
    assert!(out.stderr.contains("never closed"), "{out:?}");
    let out = plane.cli(&["exec", "-c", &name, "@nosuch", "--", "true"]);
    assert!(out.stderr.contains("unknown group @nosuch"), "{out:?}");
    // Another user's cluster does not exist for them.
    let bob: vcluster::model::IssuedToken = plane.admin_post(
        "/v1/users",
        &json!({"name": format!("bob{}", name.len()), "role": "user"}),
    );
    let trust = vcluster::tls::ServerTrust::ca_file(plane.ca_file()).unwrap();
    let bob =
        vcluster::cli::ApiClient::connect(plane.url(), &bob.token, Some(&trust), false).unwrap();
    let refused = plane.block_on(bob.post_stream(
        &format!("/v1/clusters/{name}/exec"),
        &json!({"nodes": "@all", "command": format!("touch {marker}")}),
        Duration::from_secs(10),
    ));
    let err = refused.expect_err("bob may not run commands on alice's cluster");
    assert!(err.to_string().contains("no cluster"), "{err}");
    // Unknown fields are refused, never ignored.
    let refused = plane.block_on(plane.user().post_stream(
        &format!("/v1/clusters/{name}/exec"),
        &json!({"nodes": "@all", "command": "true", "as_root": true}),
        Duration::from_secs(10),
    ));
    assert!(refused.unwrap_err().to_string().contains("as_root"));
    assert!(!std::path::Path::new(&marker).exists(), "a node ran it");

    // One user's flood of commands does not starve anyone: 16 at once, the 17th is
    // refused with 429 and says why, another user's command still runs, and the slots
    // are free again once the 16 callers go away.
    let exec_path = format!("/v1/clusters/{name}/exec");
    let sleeper = json!({"nodes": format!("{name}-node-1"), "command": "sleep 30"});
    let held: Vec<_> = (0..16)
        .map(|i| {
            plane
                .block_on(
                    plane
                        .user()
                        .post_stream(&exec_path, &sleeper, Duration::from_secs(60)),
                )
                .unwrap_or_else(|e| panic!("command {i} of 16: {e}"))
        })
        .collect();
    let refused = plane
        .block_on(
            plane
                .user()
                .post_stream(&exec_path, &sleeper, Duration::from_secs(60)),
        )
        .expect_err("a 17th command at once");
    assert!(
        refused.to_string().contains("already runs 16 commands")
            && refused.to_string().contains("429"),
        "{refused}"
    );
    let bobs = format!("{name}b");
    let bob_cluster: vcluster::model::Accepted = plane
        .block_on(bob.post(
            "/v1/clusters",
            &json!({"name": bobs, "nodes": 1, "node_memory_mib": 64, "recovery": "off"}),
        ))
        .unwrap();
    plane.note_cluster(&bobs);
    let done = plane
        .block_on(bob.wait_task(bob_cluster.task.id, Duration::from_secs(60)))
        .unwrap();
    assert_eq!(
        done.state,
        vcluster::model::TaskState::Succeeded,
        "{done:?}"
    );
    let bob_out = plane.block_on(async {
        let resp = bob
            .post_stream(
                &format!("/v1/clusters/{bobs}/exec"),
                &json!({"nodes": "@all", "command": "echo bob"}),
                Duration::from_secs(30),
            )
            .await
            .expect("bob's command runs while alice holds 16");
        resp.text().await.unwrap()
    });
    assert!(bob_out.contains("\"line\":\"bob\""), "{bob_out}");
    drop(held);
    let alice = plane.user().clone();
    wait_until(
        "alice's slots are free again",
        Duration::from_secs(15),
        || {
            plane.block_on(async {
                let r = alice
                    .post_stream(
                        &exec_path,
                        &json!({"nodes": format!("{name}-node-1"), "command": "true"}),
                        Duration::from_secs(30),
                    )
                    .await;
                match r {
                    Ok(resp) => resp.text().await.is_ok(),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        false
                    }
                }
            })
        },
    );
    let agents = node_agent_pids(&c);
    wait_until("the 16 sleeps are killed", Duration::from_secs(10), || {
        others_in(&format!("{name}-node-1"), &agents).is_empty()
    });
    let bob_cluster_row: Cluster = plane
        .block_on(plane.admin().get(&format!("/v1/clusters/{bobs}")))
        .unwrap();
    let task: vcluster::model::Accepted = plane
        .block_on(bob.delete(&format!("/v1/clusters/{bobs}")))
        .unwrap();
    plane
        .block_on(bob.wait_task(task.task.id, Duration::from_secs(60)))
        .unwrap();
    assert!(
        plane
            .leftovers(&topo, &overlay, &bob_cluster_row)
            .is_empty()
    );

    // A node whose agent died is listed apart as unreachable; the others still run it.
    let dead = format!("{name}-node-2");
    let pid_file = topo.dir().join("agent1/nodes").join(format!("{dead}.pid"));
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    let killed = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_until("the node agent is gone", Duration::from_secs(5), || {
        node_agent_pids(&c).len() == 5
    });
    let out = plane.cli(&["exec", "-b", &all, "--", "echo", "up"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    // ...and monitoring marks it down within 4 heartbeats (plus a housekeeping round),
    // with an event saying so; the others stay up.
    let health = |node: &str| {
        plane
            .cluster(&name)
            .nodes
            .iter()
            .find(|n| n.name == node)
            .and_then(|n| n.health.clone())
            .map(|h| h.health)
    };
    let killed_at = Instant::now();
    wait_until("the dead node is down", Duration::from_secs(15), || {
        health(&dead) == Some(Health::Down)
    });
    eprintln!(
        "node down {:.1} s after its agent was killed (4 beats of 1 s)",
        killed_at.elapsed().as_secs_f64()
    );
    let events = |kind: &str| -> Vec<Event> {
        plane
            .block_on(plane.user().get::<Vec<Event>>("/v1/events?limit=1000"))
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect()
    };
    let down = events("node-down");
    assert!(
        down.iter()
            .any(|e| e.message.contains(&dead) && e.message.contains("has not answered")),
        "{down:?}"
    );
    assert_eq!(health(&format!("{name}-node-1")), Some(Health::Up));
    // A node that hangs (its agent stopped) is down, and up again when it answers.
    let hung = format!("{name}-node-4");
    let hung_pid =
        std::fs::read_to_string(topo.dir().join("agent2/nodes").join(format!("{hung}.pid")))
            .unwrap();
    let signal = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, hung_pid.trim()])
                .status()
                .unwrap()
                .success()
        )
    };
    signal("-STOP");
    wait_until("the hung node is down", Duration::from_secs(15), || {
        health(&hung) == Some(Health::Down)
    });
    signal("-CONT");
    wait_until("the hung node is up again", Duration::from_secs(10), || {
        health(&hung) == Some(Health::Up)
    });
    let up = events("node-up");
    assert!(up.iter().any(|e| e.message.contains(&hung)), "{up:?}");
    let metrics = plane.get_text(&topo, "/metrics");
    assert!(
        metrics.contains("vcluster_nodes_health{health=\"down\"} 1"),
        "{metrics}"
    );
    let shown = plane.cli(&["cluster", "show", &name]);
    assert!(shown.success, "{shown:?}");
    assert!(
        shown
            .stdout
            .lines()
            .any(|l| l.contains(&dead) && l.contains(" down ")),
        "{}",
        shown.stdout
    );
    assert!(
        out.stdout.contains(&format!("{dead} (1) unreachable:")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(" (5)\n"), "{}", out.stdout);

    // Ctrl-C: what arrived is kept, and the command stops on every node.
    let mut child = plane
        .cli_command(&[
            "exec",
            &format!("{name}-node-[3-4]"),
            "--",
            "echo started; sleep 60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match lines.next() {
            Some(Ok(l)) => seen.push(l),
            other => panic!("exec ended before both nodes started: {other:?} {seen:?}"),
        }
    }
    // SAFETY: kill(2) on our own child (`ip netns exec` execs vcluster in place).
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(seen.iter().all(|l| l.ends_with(": started")), "{seen:?}");
    let agents = node_agent_pids(&c);
    wait_until(
        "the interrupted command is gone from the nodes",
        Duration::from_secs(10),
        || {
            [3, 4]
                .iter()
                .all(|n| others_in(&format!("{name}-node-{n}"), &agents).is_empty())
        },
    );

    plane.delete_cluster(&name);
    let left = plane.leftovers(&topo, &overlay, &c);
    assert!(left.is_empty(), "left behind: {left:?}");
}

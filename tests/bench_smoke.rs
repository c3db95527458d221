//! Smoke runs of every `bench` workload at tiny sizes: they check that the
//! load generator completes and that what it counted is complete, not
//! speed (benchmarks are never timed assertions).

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/pg.rs"]
mod pg;

use std::process::Command;

use common::{run_bench_args, Server};

fn ids() -> String {
    let mut ids: Vec<String> = (0..4).map(|i| format!("bench-{i}")).collect();
    ids.extend((0..20).map(|i| format!("idle-{i}")));
    ids.push("bench-w".into());
    ids.push("bench-r".into());
    ids.join(",")
}

fn bench(port: u16, args: &[&str]) -> serde_json::Value {
    common::run_bench(port, args)
}

#[test]
fn fanout_counts_every_delivery() {
    let s = Server::start(&["--memory", "--client-ids", &ids()]);
    let r = bench(
        s.port,
        &[
            "fanout",
            "--clients",
            "4",
            "--messages",
            "50",
            "--window",
            "8",
        ],
    );
    assert_eq!(r["workload"], "fanout");
    assert_eq!(r["sends"], 200);
    assert_eq!(r["deliveries"], 4 * 3 * 50);
    assert!(r["latency_us_p99"].as_u64().unwrap() >= r["latency_us_p50"].as_u64().unwrap());
    assert_eq!(r["nodes"], 1);
    assert_eq!(r["cross_node_deliveries"], 0);
    assert!(r["cross_node_latency_us_p50"].is_null());
}

#[test]
fn fanout_and_catchup_run_over_websocket() {
    let (s, http) = Server::start_http(&["--memory", "--client-ids", &ids()]);
    let r = bench(
        http,
        &[
            "--transport",
            "ws",
            "fanout",
            "--clients",
            "4",
            "--messages",
            "50",
            "--window",
            "8",
        ],
    );
    assert_eq!(r["transport"], "ws");
    assert_eq!(r["sends"], 200);
    assert_eq!(r["deliveries"], 4 * 3 * 50);
    drop(s);
    // catchup wants ids with nothing pending: a fresh server.
    let (_s, http) = Server::start_http(&["--memory", "--client-ids", &ids()]);
    let r = bench(http, &["--transport", "ws", "catchup", "--messages", "100"]);
    assert_eq!(r["workload"], "catchup");
}

#[test]
fn servers_deal_clients_over_the_nodes_and_count_cross_node_deliveries() {
    // Two entries for one server (two names of loopback): two nodes as far
    // as the load generator can tell.
    let s = Server::start(&["--memory", "--client-ids", &ids()]);
    let list = format!("127.0.0.1:{0},localhost:{0}", s.port);
    let r = run_bench_args(&[
        "fanout",
        "--servers",
        &list,
        "--clients",
        "4",
        "--messages",
        "50",
        "--window",
        "8",
    ]);
    assert_eq!(r["workload"], "fanout");
    assert_eq!(r["sends"], 200);
    assert_eq!(r["deliveries"], 4 * 3 * 50);
    assert_eq!(r["nodes"], 2);
    // bench-0 and bench-2 on the first entry, bench-1 and bench-3 on the
    // second: each receiver has two senders on the other one.
    assert_eq!(r["cross_node_deliveries"], 4 * 2 * 50);
    let p50 = r["cross_node_latency_us_p50"].as_u64().unwrap();
    let p99 = r["cross_node_latency_us_p99"].as_u64().unwrap();
    assert!(p50 >= 1 && p99 >= p50, "{r}");
    assert!(r["cross_node_deliveries_per_sec"].as_f64().unwrap() > 0.0);

    // catchup fills through the first entry and drains through the second
    // (on a fresh server: bench-r must have nothing pending).
    drop(s);
    let s = Server::start(&["--memory", "--client-ids", &ids()]);
    let list = format!("127.0.0.1:{0},localhost:{0}", s.port);
    let r = run_bench_args(&["--servers", &list, "catchup", "--messages", "100"]);
    assert_eq!(r["workload"], "catchup");
    assert_eq!(r["opts"]["messages"], 100);
}

#[test]
fn servers_over_a_real_cluster_count_every_cross_node_delivery() {
    // Two nodes on one private PostgreSQL: messages cross for real.
    let c = cluster::Cluster::start(2, &ids());
    let r = run_bench_args(&[
        "--servers",
        &c.servers(),
        "fanout",
        "--clients",
        "4",
        "--messages",
        "30",
        "--window",
        "8",
    ]);
    assert_eq!(r["sends"], 120);
    assert_eq!(r["deliveries"], 4 * 3 * 30);
    assert_eq!(r["nodes"], 2);
    assert_eq!(r["cross_node_deliveries"], 4 * 2 * 30);
    assert!(r["cross_node_latency_us_p99"].as_u64().unwrap() >= 1, "{r}");
}

#[test]
fn servers_with_server_ip_or_port_is_a_usage_error() {
    for extra in [["--port", "5000"], ["--server-ip", "127.0.0.1"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_bench"))
            .args(["--servers", "127.0.0.1:5000,127.0.0.1:5001"])
            .args(extra)
            .args(["fanout", "--clients", "2", "--messages", "1"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--servers"), "{err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--servers", "127.0.0.1:5000,nowhere", "fanout"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'nowhere' has no port"));
}

#[test]
fn durable_confirms_every_send() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&[
        "--client-ids",
        &ids(),
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let r = bench(s.port, &["durable", "--clients", "3", "--messages", "40"]);
    assert_eq!(r["workload"], "durable");
    assert_eq!(r["sends"], 120);
}

#[test]
fn catchup_drains_the_whole_backlog_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let s = Server::start(&["--client-ids", &ids(), "--data-dir", data]);
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "--port",
            &s.port.to_string(),
            "catchup",
            "--phase",
            "fill",
            "--messages",
            "500",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(s);
    let s = Server::start(&["--client-ids", &ids(), "--data-dir", data]);
    let r = bench(
        s.port,
        &["catchup", "--phase", "drain", "--messages", "500"],
    );
    assert_eq!(r["workload"], "catchup");
    assert_eq!(r["opts"]["messages"], 500);
}

#[test]
fn connections_reach_every_idle_client() {
    let s = Server::start(&["--memory", "--client-ids", &ids()]);
    let pid = s.child.id().to_string();
    let r = bench(
        s.port,
        &["connections", "--clients", "20", "--server-pid", &pid],
    );
    assert_eq!(r["workload"], "connections");
    assert_eq!(r["connections"], 20);
    assert!(r["server_bytes_per_connection"].is_number());
}

#[test]
fn a_bench_that_finds_old_messages_refuses_to_report() {
    let s = Server::start(&["--memory", "--client-ids", &ids()]);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (mut c, _) = s.login("bench-0").await;
            c.send("SEND left over").await;
            assert_eq!(c.line().await, "SENT 1");
        });
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "--port",
            &s.port.to_string(),
            "fanout",
            "--clients",
            "2",
            "--messages",
            "5",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fresh server"));
}

#[test]
fn fsync_reports_a_rate() {
    let dir = tempfile::tempdir().unwrap();
    let r = bench(
        0,
        &[
            "fsync",
            "--dir",
            dir.path().to_str().unwrap(),
            "--seconds",
            "0.1",
        ],
    );
    assert!(r["fsyncs_per_sec"].as_f64().unwrap() > 0.0);
}

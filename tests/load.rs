//! Load: 5,000 concurrent logged-in connections, one broadcast through all
//! of them (with the `bench` load generator, which raises its own fd
//! limit and checks every connection got the message).

mod common;

use std::process::Command;

use common::Server;

#[test]
fn five_thousand_connections_all_get_a_broadcast() {
    const N: usize = 5_000;
    let mut ids: Vec<String> = (0..N).map(|i| format!("idle-{i}")).collect();
    ids.push("bench-0".into());
    let s = Server::start(&["--memory", "--client-ids", &ids.join(",")]);
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--port", &s.port.to_string(), "--json", "connections"])
        .args([
            "--clients",
            &N.to_string(),
            "--server-pid",
            &s.child.id().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["connections"], N);
    let per = r["server_bytes_per_connection"].as_f64().unwrap();
    eprintln!(
        "{N} connections: broadcast reached all in {} ms; server memory {per:.0} B per connection",
        r["broadcast_ms"]
    );
    // Not a speed check: memory that grew with connections well past a
    // small buffer each would mean an idle connection holds a buffer.
    assert!(per < 16.0 * 1024.0, "{per} B per idle connection");
}

//! Load: 5,000 concurrent logged-in connections, one broadcast through all
//! of them (with the `bench` load generator, which raises its own fd
//! limit and checks every connection got the message).

mod common;

use common::Server;

#[test]
fn five_thousand_connections_all_get_a_broadcast() {
    const N: usize = 5_000;
    let mut ids: Vec<String> = (0..N).map(|i| format!("idle-{i}")).collect();
    ids.push("bench-0".into());
    let s = Server::start(&["--memory", "--client-ids", &ids.join(",")]);
    let pid = s.child.id().to_string();
    let n = N.to_string();
    let r = common::run_bench(
        s.port,
        &["connections", "--clients", &n, "--server-pid", &pid],
    );
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

//! The servers a client may connect to (`--servers`, or `--server-ip` and
//! `--port` as a list of one) and the order it tries them in: the first
//! listed first, then, after each lost connection or failed connect, the
//! next one, wrapping around.

use std::fmt;

/// One server: a host name or address, and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// TCP port (never 0).
    pub port: u16,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The `--servers` list: at least one node, no two alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeList(pub Vec<Node>);

/// Parses `host:port,host:port…` (an IPv6 host in brackets: `[::1]:7000`);
/// the error names the entry at fault.
pub fn parse_list(list: &str) -> Result<NodeList, String> {
    let mut nodes: Vec<Node> = Vec::new();
    for entry in list.split(',') {
        let node = parse_node(entry.trim())?;
        let same = |n: &&Node| n.port == node.port && n.host.eq_ignore_ascii_case(&node.host);
        if nodes.iter().any(|n| same(&n)) {
            return Err(format!("'{}' is listed twice", entry.trim()));
        }
        nodes.push(node);
    }
    Ok(NodeList(nodes))
}

/// Parses one `host:port` entry.
fn parse_node(entry: &str) -> Result<Node, String> {
    if entry.is_empty() {
        return Err("an entry is empty (expected host:port,host:port…)".into());
    }
    let Some((host, port)) = entry.rsplit_once(':') else {
        return Err(format!("'{entry}' has no port (expected host:port)"));
    };
    let host = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .ok_or_else(|| format!("'{entry}' has an unclosed '['"))?,
        None if host.contains(':') => {
            return Err(format!(
                "'{entry}': write an IPv6 address in brackets, as [::1]:7000"
            ))
        }
        None => host,
    };
    if host.is_empty() {
        return Err(format!("'{entry}' has no host (expected host:port)"));
    }
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => return Err(format!("'{entry}' has a bad port (expected 1 to 65535)")),
    };
    Ok(Node {
        host: host.to_owned(),
        port,
    })
}

/// The nodes and which one is next to be tried.
#[derive(Clone, Debug)]
pub struct Rotation {
    nodes: Vec<Node>,
    current: usize,
}

impl Rotation {
    /// Starts at the first node; `None` for an empty list.
    pub fn new(nodes: Vec<Node>) -> Option<Rotation> {
        (!nodes.is_empty()).then_some(Rotation { nodes, current: 0 })
    }

    /// The node to connect to now.
    pub fn current(&self) -> &Node {
        // `new` refuses an empty list and `advance` stays in range.
        &self.nodes[self.current]
    }

    /// Moves on to the next node, after the last back to the first.
    pub fn advance(&mut self) {
        self.current = (self.current + 1) % self.nodes.len();
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// All nodes, in list order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: u16) -> Node {
        Node {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn a_list_parses_in_order_with_ipv6_in_brackets() {
        let list = parse_list("a.example:7000, 10.0.0.2:7001,[::1]:7002").unwrap();
        assert_eq!(
            list.0,
            vec![
                node("a.example", 7000),
                node("10.0.0.2", 7001),
                node("::1", 7002)
            ]
        );
        assert_eq!(list.0[2].to_string(), "[::1]:7002");
        assert_eq!(list.0[0].to_string(), "a.example:7000");
    }

    #[test]
    fn bad_lists_name_the_entry_at_fault() {
        for (list, want) in [
            ("", "empty"),
            ("a:1,", "empty"),
            ("a:1,,b:2", "empty"),
            ("a:1,b", "'b' has no port"),
            ("a:1,b:", "'b:' has a bad port"),
            ("b:0", "'b:0' has a bad port"),
            ("b:65536", "'b:65536' has a bad port"),
            ("b:x1", "'b:x1' has a bad port"),
            (":7000", "':7000' has no host"),
            ("[]:7000", "'[]:7000' has no host"),
            ("::1:7000", "in brackets"),
            ("[::1:7000", "unclosed"),
            ("a:1,b:2,A:1", "'A:1' is listed twice"),
        ] {
            let err = parse_list(list).unwrap_err();
            assert!(err.contains(want), "{list:?}: {err}");
        }
    }

    #[test]
    fn the_rotation_starts_at_the_first_node_and_wraps_around() {
        assert!(Rotation::new(Vec::new()).is_none());
        let mut r = Rotation::new(vec![node("a", 1), node("b", 2), node("c", 3)]).unwrap();
        let mut seen = Vec::new();
        for _ in 0..7 {
            seen.push(r.current().host.clone());
            r.advance();
        }
        assert_eq!(seen, ["a", "b", "c", "a", "b", "c", "a"]);
        let mut one = Rotation::new(vec![node("a", 1)]).unwrap();
        one.advance();
        assert_eq!(one.current(), &node("a", 1));
    }
}

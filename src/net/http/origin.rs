//! `Origin` checks for WebSocket upgrades: a browser sends the page's origin
//! with every WebSocket request, so a page of another site can be refused
//! before it can speak to the broker with the user's network position.

use std::fmt;

/// A web origin: scheme, host and port (the default port of the scheme
/// when none is written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]` (IPv6 as `[addr][:port]`) into a lower-case host
/// and the port, if written.
fn host_and_port(s: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unclosed [ in {s:?}"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("bad port in {s:?}"))?,
            ),
        };
        (format!("[{addr}]"), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (s.to_owned(), None),
        }
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!("bad host in {s:?}"));
    }
    let port = port
        .map(|p| p.parse::<u16>().map_err(|_| format!("bad port in {s:?}")))
        .transpose()?;
    Ok((host.to_ascii_lowercase(), port))
}

impl Origin {
    /// Parses `scheme://host[:port]` (`http` or `https`; one trailing `/`
    /// allowed), as browsers send it and as `--http-allowed-origins` takes it.
    pub fn parse(s: &str) -> Result<Origin, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("{s:?} is not an origin like https://chat.example"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default = default_port(&scheme)
            .ok_or_else(|| format!("{s:?}: an origin's scheme is http or https"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = host_and_port(rest)?;
        Ok(Origin {
            scheme,
            host,
            port: port.unwrap_or(default),
        })
    }

    /// The origin of a page served by this server under `host` (the
    /// request's `Host` header) over http or https.
    pub fn own(secure: bool, host: &str) -> Result<Origin, String> {
        let scheme = if secure { "https" } else { "http" };
        let (host, port) = host_and_port(host)?;
        Ok(Origin {
            scheme: scheme.to_owned(),
            port: port.unwrap_or(if secure { 443 } else { 80 }),
            host,
        })
    }
}

/// Whether a WebSocket request may be upgraded.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No `Origin` header: not a browser (browsers always send one on
    /// WebSocket requests), so nothing to protect against.
    NoOrigin,
    /// The server's own origin, or one listed.
    Allowed,
    /// Another site's page: refused with 403.
    Foreign,
}

/// Judges a request's `Origin` header against the server's own origin
/// (from `host`, the `Host` header) and the allowed list.
pub fn judge(
    origin: Option<&str>,
    host: Option<&str>,
    secure: bool,
    allowed: &[Origin],
) -> Verdict {
    let Some(origin) = origin else {
        return Verdict::NoOrigin;
    };
    let Ok(origin) = Origin::parse(origin) else {
        return Verdict::Foreign;
    };
    let own = host.and_then(|h| Origin::own(secure, h).ok());
    if own.as_ref() == Some(&origin) || allowed.contains(&origin) {
        Verdict::Allowed
    } else {
        Verdict::Foreign
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_own_origin_is_allowed_and_another_port_or_scheme_is_not() {
        let j = |o, h, s| judge(Some(o), Some(h), s, &[]);
        assert_eq!(
            j("http://127.0.0.1:8080", "127.0.0.1:8080", false),
            Verdict::Allowed
        );
        assert_eq!(
            j("HTTP://Chat.Example", "chat.example:80", false),
            Verdict::Allowed
        );
        assert_eq!(
            j("https://chat.example", "chat.example", true),
            Verdict::Allowed
        );
        assert_eq!(j("http://[::1]:9", "[::1]:9", false), Verdict::Allowed);
        assert_eq!(
            j("http://127.0.0.1:8081", "127.0.0.1:8080", false),
            Verdict::Foreign
        );
        assert_eq!(
            j("https://127.0.0.1:8080", "127.0.0.1:8080", false),
            Verdict::Foreign
        );
        assert_eq!(
            j("http://evil.example", "chat.example", false),
            Verdict::Foreign
        );
        assert_eq!(j("null", "chat.example", false), Verdict::Foreign);
        assert_eq!(judge(Some("http://a"), None, false, &[]), Verdict::Foreign);
        assert_eq!(judge(None, Some("a"), false, &[]), Verdict::NoOrigin);
    }

    #[test]
    fn listed_origins_are_allowed() {
        let allowed = [Origin::parse("https://app.example/").unwrap()];
        let v = judge(
            Some("https://app.example:443"),
            Some("x:1"),
            false,
            &allowed,
        );
        assert_eq!(v, Verdict::Allowed);
        let v = judge(Some("http://app.example"), Some("x:1"), false, &allowed);
        assert_eq!(v, Verdict::Foreign);
    }

    #[test]
    fn malformed_origins_are_refused_when_listed() {
        assert!(Origin::parse("app.example").is_err());
        assert!(Origin::parse("ftp://app.example").is_err());
        assert!(Origin::parse("https://app.example/path").is_err());
        assert!(Origin::parse("https://app.example:99999").is_err());
        assert!(Origin::parse("https://").is_err());
    }
}

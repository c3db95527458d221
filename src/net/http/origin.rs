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

impl Origin {
    /// Whether the host is an IP address or `localhost` (or a name under
    /// it): names that DNS rebinding cannot point a foreign page at.
    fn host_is_address(&self) -> bool {
        let bare = self
            .host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host);
        bare.parse::<std::net::IpAddr>().is_ok()
            || self.host == "localhost"
            || self.host.ends_with(".localhost")
    }
}

/// Judges a request's `Origin` header against the server's own origin
/// (from `host`, the `Host` header) and the allowed list.
///
/// A page's origin equal to the `Host` it was served under proves nothing
/// when that host is a DNS name the page's site controls: DNS rebinding
/// points `evil.example` at this server, and the browser then sends
/// `Host: evil.example` with `Origin: http://evil.example`. So the `Host`
/// counts as the server's own only when it is an IP address or
/// `localhost`, or when `trust_names` (the listener is not on loopback,
/// where it is reached by its public names); other names must be listed.
pub fn judge(
    origin: Option<&str>,
    host: Option<&str>,
    secure: bool,
    trust_names: bool,
    allowed: &[Origin],
) -> Verdict {
    let Some(origin) = origin else {
        return Verdict::NoOrigin;
    };
    let Ok(origin) = Origin::parse(origin) else {
        return Verdict::Foreign;
    };
    let own = host
        .and_then(|h| Origin::own(secure, h).ok())
        .filter(|own| trust_names || own.host_is_address());
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
        let j = |o, h, s| judge(Some(o), Some(h), s, true, &[]);
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
        assert_eq!(
            judge(Some("http://a"), None, false, true, &[]),
            Verdict::Foreign
        );
        assert_eq!(judge(None, Some("a"), false, false, &[]), Verdict::NoOrigin);
    }

    #[test]
    fn on_loopback_a_host_name_is_own_only_when_it_is_an_address_or_listed() {
        let j = |o, h| judge(Some(o), Some(h), false, false, &[]);
        // DNS rebinding: the page's own name, pointed at this server.
        assert_eq!(
            j("http://evil.example:8080", "evil.example:8080"),
            Verdict::Foreign
        );
        assert_eq!(
            j("http://127.0.0.1:8080", "127.0.0.1:8080"),
            Verdict::Allowed
        );
        assert_eq!(j("http://[::1]:8080", "[::1]:8080"), Verdict::Allowed);
        assert_eq!(
            j("http://localhost:8080", "localhost:8080"),
            Verdict::Allowed
        );
        assert_eq!(
            j("http://chat.localhost:8080", "chat.localhost:8080"),
            Verdict::Allowed
        );
        let listed = [Origin::parse("http://chat.example:8080").unwrap()];
        assert_eq!(
            judge(
                Some("http://chat.example:8080"),
                Some("chat.example:8080"),
                false,
                false,
                &listed
            ),
            Verdict::Allowed
        );
    }

    #[test]
    fn listed_origins_are_allowed() {
        let allowed = [Origin::parse("https://app.example/").unwrap()];
        let v = judge(
            Some("https://app.example:443"),
            Some("x:1"),
            false,
            false,
            &allowed,
        );
        assert_eq!(v, Verdict::Allowed);
        let v = judge(
            Some("http://app.example"),
            Some("x:1"),
            false,
            false,
            &allowed,
        );
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

//! The HTTP listeners' wiring: the web page and WebSocket listener
//! (`--http-bind`), whose connections enter through [`Dispatch`] like TCP
//! ones, and the admin listener (`--admin-bind`).

use std::net::SocketAddr;

use actix_web::dev::{Server, ServerHandle};
use anyhow::Context as _;

use super::admission::Dispatch;
use super::{listen, ServerConfig};
use crate::net::http::Routes;

/// The HTTP and admin listeners, bound before anything is announced.
pub(super) struct Bound {
    http: Option<std::net::TcpListener>,
    admin: Option<std::net::TcpListener>,
}

/// Binds the HTTP and admin listeners that are configured, so that a
/// taken port fails the start before the first stdout line.
pub(super) fn bind(config: &ServerConfig) -> anyhow::Result<Bound> {
    Ok(Bound {
        http: listen_http(config)?,
        admin: listen_admin(config)?,
    })
}

/// The HTTP and admin servers, built on their listeners, not yet running.
pub(super) struct Built {
    http: Option<(SocketAddr, Server)>,
    admin: Option<(SocketAddr, Server)>,
}

impl Bound {
    /// Builds the servers: WebSockets enter through `dispatch`, the admin
    /// listener reads `admin`.
    pub(super) fn build(
        self,
        config: &ServerConfig,
        dispatch: std::sync::Arc<Dispatch>,
        threads: usize,
        admin: crate::admin::AdminState,
    ) -> anyhow::Result<Built> {
        let http = match self.http {
            Some(l) => {
                let addr = l.local_addr().context("cannot read the HTTP address")?;
                Some((addr, start_http(config, l, dispatch, threads)?))
            }
            None => None,
        };
        let admin = match self.admin {
            Some(l) => {
                let addr = l.local_addr().context("cannot read the admin address")?;
                let server =
                    crate::admin::start(l, admin).context("cannot start the admin listener")?;
                Some((addr, server))
            }
            None => None,
        };
        Ok(Built { http, admin })
    }
}

impl Built {
    /// The stdout lines that announce these listeners, in order.
    pub(super) fn announcements(&self) -> Vec<String> {
        let http = self.http.as_ref().map(|(a, _)| format!("http on {a}"));
        let admin = self.admin.as_ref().map(|(a, _)| format!("admin on {a}"));
        http.into_iter().chain(admin).collect()
    }

    /// Runs the servers on this thread's loop (each logs in one line if it
    /// fails).
    pub(super) fn run(self, tls: bool) -> Running {
        let http = self.http.map(|(addr, server)| {
            let secure = if tls { " (HTTPS/WSS)" } else { "" };
            log::info!(
                "http on {addr}: the web page at /, the protocol over WebSocket at /ws{secure}"
            );
            run_http_server(server, "HTTP")
        });
        let admin = self.admin.map(|(addr, server)| {
            log::info!("admin on {addr}: /metrics, /healthz, /readyz (internal: never expose it)");
            run_http_server(server, "admin")
        });
        Running { http, admin }
    }
}

/// The running HTTP and admin servers.
pub(super) struct Running {
    http: Option<ServerHandle>,
    admin: Option<ServerHandle>,
}

impl Running {
    /// Stops taking new HTTP connections (no new WebSockets while the
    /// sessions are told `BYE shutdown`).
    pub(super) async fn pause(&self) {
        if let Some(handle) = &self.http {
            handle.pause().await;
        }
    }

    /// Stops both servers; the WebSocket sessions have said `BYE shutdown`
    /// by then, so their connections close now.
    pub(super) async fn stop(self) {
        for handle in [self.http, self.admin].into_iter().flatten() {
            handle.stop(true).await;
        }
    }
}

/// Binds the HTTP listener, when there is one, as a listener the HTTP
/// server takes over.
fn listen_http(config: &ServerConfig) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(http) = &config.http else {
        return Ok(None);
    };
    let listener = listen(http.bind)
        .and_then(|l| l.into_std())
        .with_context(|| format!("cannot listen for HTTP on {}", http.bind))?;
    Ok(Some(listener))
}

/// Starts the HTTP server on its bound listener, with WebSocket sessions
/// admitted through `dispatch`.
fn start_http(
    config: &ServerConfig,
    listener: std::net::TcpListener,
    dispatch: std::sync::Arc<Dispatch>,
    threads: usize,
) -> anyhow::Result<Server> {
    let routes = Routes {
        admit: std::sync::Arc::new(move |conn| dispatch.admit(conn)),
        allowed_origins: config
            .http
            .as_ref()
            .map(|h| h.allowed_origins.clone())
            .unwrap_or_default(),
        max_frame_bytes: config.session.max_frame_bytes,
        idle_timeout: config.session.idle_timeout,
        secure: config.tls.is_some(),
        trust_host_names: config
            .http
            .as_ref()
            .is_some_and(|h| !h.bind.ip().is_loopback()),
    };
    let tls = config.tls.as_ref().map(|t| &*t.config);
    crate::net::http::serve(listener, tls, routes, threads)
        .context("cannot start the HTTP listener")
}

/// Runs an actix-web server on this thread's loop, logging in one line
/// (with `what` it serves) if it fails; returns its handle.
fn run_http_server(server: Server, what: &'static str) -> ServerHandle {
    let handle = server.handle();
    actix_rt::spawn(async move {
        if let Err(e) = server.await {
            log::error!("the {what} listener failed: {e}");
        }
    });
    handle
}

/// Binds the admin listener, when there is one, as a listener the admin
/// server takes over.
fn listen_admin(config: &ServerConfig) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(addr) = config.admin_bind else {
        return Ok(None);
    };
    let listener = listen(addr)
        .and_then(|l| l.into_std())
        .with_context(|| format!("cannot listen for admin requests on {addr}"))?;
    Ok(Some(listener))
}

//! The HTTP listener: the web chat page at `GET /` and the wire protocol
//! over WebSocket at `GET /ws`, on an actix-web server in the broker's own
//! actix system (so WebSocket sessions are sessions of the same registry).
//! With a TLS configuration it speaks HTTPS and WSS.

pub mod origin;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{http::header, web, App, HttpRequest, HttpResponse, HttpServer};

use self::origin::{judge, Origin, Verdict};
use super::transport::Connection;

/// The page served at `/`: one self-contained file.
pub const PAGE: &str = include_str!("page.html");

/// Where and for whom the HTTP listener serves.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Address and port to bind (port 0: the OS picks).
    pub bind: SocketAddr,
    /// Origins besides the server's own whose pages may open `/ws`.
    pub allowed_origins: Vec<Origin>,
}

/// Hands an upgraded WebSocket connection to the broker, which starts a
/// session for it (or refuses it, over the connection, when at its limit).
pub type Admit = Arc<dyn Fn(Connection) + Send + Sync>;

/// What the routes need.
pub struct Routes {
    /// Takes each upgraded connection.
    pub admit: Admit,
    /// Origins allowed besides the server's own.
    pub allowed_origins: Vec<Origin>,
    /// Longest frame, for the WebSocket message limits.
    pub max_frame_bytes: usize,
    /// The sessions' idle timeout, for the WebSocket ping interval.
    pub idle_timeout: Option<Duration>,
    /// Whether the listener speaks HTTPS.
    pub secure: bool,
    /// Whether a DNS name in `Host` counts as the server's own origin: not
    /// on a loopback listener, which DNS rebinding would otherwise open to
    /// any site (see [`origin::judge`]).
    pub trust_host_names: bool,
}

/// Seconds a stopping HTTP server waits for its connections to end (their
/// sessions have said `BYE shutdown` by then).
const SHUTDOWN_SECS: u64 = 3;

/// Starts serving on `listener` (already bound, so a taken port failed the
/// start earlier) with `workers` threads; HTTPS when `tls` is given. The
/// returned server runs until stopped through its handle.
pub fn serve(
    listener: std::net::TcpListener,
    tls: Option<&tokio_rustls::rustls::ServerConfig>,
    routes: Routes,
    workers: usize,
) -> std::io::Result<actix_web::dev::Server> {
    let routes = web::Data::new(routes);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(routes.clone())
            .route("/", web::get().to(page))
            .route("/ws", web::get().to(websocket))
    })
    .workers(workers.max(1))
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_SECS);
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config.clone())?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

/// Refuses a request from another site's page before the upgrade.
fn refuse_origin(req: &HttpRequest, origin: &str) -> HttpResponse {
    let peer = req
        .peer_addr()
        .map_or_else(|| "a client".to_owned(), |p| p.to_string());
    log::warn!(
        "{peer}: refused a WebSocket from origin {origin:?}: neither this server's own nor in --http-allowed-origins"
    );
    HttpResponse::Forbidden()
        .content_type("text/plain; charset=utf-8")
        .body(format!(
            "origin {origin} may not open a WebSocket here: this server accepts its own origin and those given with --http-allowed-origins\n"
        ))
}

async fn websocket(
    req: HttpRequest,
    body: web::Payload,
    routes: web::Data<Routes>,
) -> Result<HttpResponse, actix_web::Error> {
    let text = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let origin = req.headers().get(header::ORIGIN).map(|v| {
        v.to_str()
            .map_or_else(|_| "(not text)".to_owned(), str::to_owned)
    });
    let verdict = judge(
        origin.as_deref(),
        text(header::HOST),
        routes.secure,
        routes.trust_host_names,
        &routes.allowed_origins,
    );
    if verdict == Verdict::Foreign {
        return Ok(refuse_origin(&req, origin.as_deref().unwrap_or_default()));
    }
    // actix-ws checks the request and makes the upgrade response and the
    // message stream; the response's body is our own batched one instead
    // of actix-ws's message-at-a-time channel.
    let (response, _, stream) = actix_ws::handle(&req, body)?;
    let (reader, writer, outbound) =
        super::ws::start(stream, routes.max_frame_bytes, routes.idle_timeout);
    (routes.admit)(Connection::ws(
        reader,
        writer,
        req.peer_addr(),
        routes.secure,
    ));
    Ok(response
        .set_body(actix_web::body::BodyStream::new(outbound))
        .map_into_boxed_body())
}

//! Tells a service manager (systemd's `Type=notify`) how the server is
//! doing: `READY=1` once every listener is bound and the store is open,
//! `STOPPING=1` when shutdown begins. Without `NOTIFY_SOCKET` in the
//! environment nothing is sent; a failed send is logged and never stops
//! the server.

use sd_notify::NotifyState;

/// Says the server is ready, with `status` (its addresses) as `STATUS=`.
pub fn ready(status: &str) {
    send(
        &[NotifyState::Ready, NotifyState::Status(status)],
        "READY=1",
    );
}

/// Says the server is shutting down.
pub fn stopping() {
    send(
        &[NotifyState::Stopping, NotifyState::Status("shutting down")],
        "STOPPING=1",
    );
}

/// One datagram to `$NOTIFY_SOCKET` (a no-op when it is unset); a failure
/// is one warn line.
fn send(states: &[NotifyState], what: &str) {
    if let Err(e) = sd_notify::notify(states) {
        let socket = std::env::var_os("NOTIFY_SOCKET").unwrap_or_default();
        log::warn!(
            "cannot send {what} to the service manager at NOTIFY_SOCKET={}: {e}",
            socket.to_string_lossy()
        );
    }
}

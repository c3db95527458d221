//! Who gets what: the [`Registry`] (allow-list, cursors, who is online, the
//! log) and one [`Session`] per connection.

mod answers;
mod deadlines;
pub mod dedupe;
pub mod messages;
pub mod registry;
mod retention;
pub mod session;
mod tail;
pub mod throttle;

pub use messages::{SessionId, ToSession};
pub use registry::{Registry, RegistryConfig, Retain};
pub use session::{ConnectionSlot, Session, SessionConfig};

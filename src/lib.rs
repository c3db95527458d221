//! Herald: an actor-model chat broker that never loses a message it
//! confirmed and catches up clients that were away.
//!
//! Data flows one way: socket → [`net`] codec → [`actors::Session`] →
//! [`actors::Registry`] → [`store`], and back out to sessions.

// No panics on input or I/O paths: errors are values. Tests may unwrap.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod actors;
pub mod admin;
pub mod auth;
pub mod cli;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod server;
pub mod store;
pub mod types;

pub use net::Message;
pub use types::{ClientId, Seq};

//! The HTTP edge toolkit: `application/problem+json` errors ([`error`]),
//! request- and response-body helpers ([`body`]), the health probes
//! ([`health`]) and how handlers reach the application state ([`state`]).

pub mod body;
pub mod error;
pub mod health;
pub mod state;

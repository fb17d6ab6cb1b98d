//! The HTTP edge toolkit: `application/problem+json` errors ([`error`]),
//! request- and response-body helpers ([`body`]) and the health probes
//! ([`health`]).

pub mod body;
pub mod error;
pub mod health;

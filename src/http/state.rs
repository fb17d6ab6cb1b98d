//! How handlers and middleware reach the application state.
//!
//! The process registers **one** application state per listener
//! (`crate::startup::AppState`, a cloneable struct of `Arc`s and pools built
//! once). Handlers and middleware do not name it — that would make every
//! handler module import `startup`, which imports them all (a cycle) —
//! they name the *component* they need instead:
//!
//! - a handler takes [`Shared<T>`] as an argument (an actix extractor, like
//!   `web::Data<T>`), e.g. `pool: Shared<WritePool>`;
//! - middleware and helpers that hold an `HttpRequest` call [`component`].
//!
//! A type is a component when it implements [`Component`]; `startup`
//! implements it for each field of its `AppState`, so the one place that
//! builds the state also says how each part is found. A component that this
//! process does not have (the worker role takes no commands, so it has no
//! intake) is `None`; a handler that needs it answers 500, as a missing
//! `web::Data` did, and middleware treats it as documented where it asks.

use std::future::{ready, Ready};
use std::ops::Deref;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};

use crate::http::error::ApiError;

/// A part of the application state that can be looked up per request.
/// Implemented by `crate::startup` for every field of its `AppState`.
pub trait Component: Sized {
    /// This process's instance, cloned out of the registered state (cheap:
    /// components are `Arc`s, pools or handles); `None` when the app has no
    /// state registered or this role does not build the component.
    fn from_app(req: &HttpRequest) -> Option<Self>;
}

/// The component `T`, or a 500 naming the missing type (a wiring bug, never
/// the client's fault).
///
/// # Errors
/// [`ApiError::Internal`] when the app does not provide `T`.
pub fn component<T: Component>(req: &HttpRequest) -> Result<T, ApiError> {
    T::from_app(req).ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!(
            "{} missing from the application state",
            std::any::type_name::<T>()
        ))
    })
}

/// Extractor: the component `T` of the application state. Dereferences to
/// `T`. Fails with a 500 ([`component`]) when the app does not provide `T`.
pub struct Shared<T> {
    inner: T,
}

impl<T> Shared<T> {
    /// The component itself.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: Component> FromRequest for Shared<T> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(component(req).map(|inner| Shared { inner }))
    }
}

//! The tower layer: the verdict before the handler runs, so a turned-away
//! request costs neither a publish nor a handler.

use std::task::{Context, Poll};

use axum::http::Request;
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, Ready, ready};
use tower_layer::Layer;
use tower_service::Service;

use super::Admission;

/// Applies an [`Admission`] to every request of the service it wraps
/// (`Router::layer`, or `route_layer` for some routes only).
#[derive(Clone, Debug)]
pub struct AdmissionLayer {
    admission: Admission,
}

impl AdmissionLayer {
    pub(super) fn new(admission: Admission) -> Self {
        Self { admission }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            admission: self.admission.clone(),
            inner,
        }
    }
}

/// The service [`AdmissionLayer`] makes.
#[derive(Clone, Debug)]
pub struct AdmissionService<S> {
    admission: Admission,
    inner: S,
}

impl<S, B> Service<Request<B>> for AdmissionService<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let client = self.admission.0.config.client_key.of(&request);
        match self.admission.judge(client.as_deref()) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(rejection) => {
                tracing::debug!(reason = rejection.reason.name(), detail = %rejection.detail, "admission: turned away");
                Either::Left(ready(Ok(rejection.into_response())))
            }
        }
    }
}

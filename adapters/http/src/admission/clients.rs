//! Each client's token bucket (governor, keyed by a header or the peer's
//! address, on tokio's clock): a client over its rate gets `429` with the
//! time its next token comes, whatever the others do.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{HeaderName, Request};
use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use sluicegate::rate::TokioClock;

/// What tells one client from another.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientKey {
    /// The peer's IP address (serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()`).
    Peer,
    /// A header's value (an API key, a tenant id); the peer's address
    /// when a request has none.
    Header(HeaderName),
}

impl ClientKey {
    /// The key of `request`; `None` when it has neither the header nor a
    /// known peer.
    pub(crate) fn of<B>(&self, request: &Request<B>) -> Option<String> {
        if let Self::Header(name) = self {
            let value = request.headers().get(name).and_then(|v| v.to_str().ok());
            if let Some(value) = value {
                return Some(value.to_owned());
            }
        }
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>()?;
        Some(peer.0.ip().to_string())
    }
}

/// A client's rate: `per_second` requests a second, bursts of `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientRate {
    /// Requests a second.
    pub per_second: NonZeroU32,
    /// The largest burst after a quiet spell.
    pub burst: NonZeroU32,
}

type Buckets =
    RateLimiter<String, DefaultKeyedStateStore<String>, TokioClock, NoOpMiddleware<Duration>>;

/// The buckets, one per client seen lately.
pub(crate) struct Clients {
    buckets: Buckets,
    clock: TokioClock,
}

impl Clients {
    pub(crate) fn new(rate: ClientRate) -> Self {
        let clock = TokioClock::default();
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        Self {
            buckets: RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock.clone()),
            clock,
        }
    }

    /// Takes a token of `client`'s, or says when its next one comes.
    pub(crate) fn take(&self, client: &str) -> Result<(), Duration> {
        self.buckets
            .check_key(&client.to_owned())
            .map_err(|not_until| {
                Duration::from(
                    not_until
                        .earliest_possible()
                        .duration_since(self.clock.now()),
                )
            })
    }

    /// Forgets clients whose buckets are full again (they would start
    /// afresh anyway), so the map holds only recent clients.
    pub(crate) fn forget_idle(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }

    /// Clients with a bucket now.
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn rate(per_second: u32, burst: u32) -> ClientRate {
        ClientRate {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_client_has_its_own_bucket_and_learns_when_its_next_token_comes() {
        let clients = Clients::new(rate(10, 2));
        assert!(clients.take("greedy").is_ok());
        assert!(clients.take("greedy").is_ok());
        assert_eq!(clients.take("greedy"), Err(Duration::from_millis(100)));
        assert!(
            clients.take("polite").is_ok(),
            "another client is untouched"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(
            clients.take("greedy").is_ok(),
            "a token a tenth of a second"
        );
        assert_eq!(clients.len(), 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        clients.forget_idle();
        assert_eq!(clients.len(), 0, "full buckets are forgotten");
    }

    #[test]
    fn the_key_is_the_header_else_the_peer() {
        let by_header = ClientKey::Header(HeaderName::from_static("x-client-id"));
        let peer: SocketAddr = ([10, 0, 0, 7], 50000).into();
        let mut request = Request::new(());
        assert_eq!(by_header.of(&request), None, "neither: no key");
        request.extensions_mut().insert(ConnectInfo(peer));
        assert_eq!(by_header.of(&request).as_deref(), Some("10.0.0.7"));
        request
            .headers_mut()
            .insert("x-client-id", "tenant-a".parse().unwrap());
        assert_eq!(by_header.of(&request).as_deref(), Some("tenant-a"));
        assert_eq!(ClientKey::Peer.of(&request).as_deref(), Some("10.0.0.7"));
    }
}

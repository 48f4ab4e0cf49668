//! Connections: the accept loop, with what keeps slow or numerous clients from exhausting the
//! server. Request headers must arrive within a deadline (the connection is closed otherwise,
//! idle keep-alive connections too), one network address may hold only so many connections,
//! and running out of file descriptors pauses accepting instead of ending the server. A request's
//! body must arrive within its own deadline once the headers did ([`body_in_time`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::error::ApiError;
use crate::limits::Places;
use crate::AppState;

/// The address a request's connection came from (the peer, not a forwarded-for header,
/// which any client can write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// How connections are accepted and kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnLimits {
    /// Time a client has to send a request's headers, from the moment the server waits for
    /// them (an idle keep-alive connection is closed after this long too).
    pub header_timeout: Duration,
    /// Most open connections from one network address; more are closed at once.
    pub per_address: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self { header_timeout: Duration::from_secs(15), per_address: 256 }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the connections in
/// progress finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    // Open connections per address.
    let addresses: Places<IpAddr> = Places::default();
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors (or a connection reset before it was accepted):
                    // wait for connections to close rather than stop serving.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(place) = addresses.take(&peer.ip(), limits.per_address) else {
            tracing::warn!("{} has {} connections open, its limit: closing a new one", peer.ip(), limits.per_address);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Handlers see the client's address (the extraction guard links keys by network).
        let service = TowerToHyperService::new(router.clone().layer(axum::Extension(ClientAddr(peer.ip()))));
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _place = place;
            if let Err(e) = conn.await {
                tracing::debug!("connection from {peer}: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Reads a request's whole body before it is routed, within the server's body deadline (408
/// after it) and size limit (413), so a client sending slowly holds no handler or slot.
pub(crate) async fn body_in_time(
    State(app): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let (limit, deadline) = (app.options.max_body_bytes, app.options.body_timeout);
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Ok(Err(e)) => {
            // axum reports the size limit as an error whose chain says so.
            let mut cause: Option<&dyn std::error::Error> = Some(&e);
            let mut too_large = false;
            while let Some(c) = cause {
                too_large |= c.to_string().contains("length limit");
                cause = c.source();
            }
            if too_large {
                let mut err = ApiError::invalid(None, format!("the request body exceeds {limit} bytes"));
                err.status = StatusCode::PAYLOAD_TOO_LARGE;
                err.into_response()
            } else {
                ApiError::invalid(None, format!("cannot read the request body: {e}")).into_response()
            }
        }
        Err(_) => ApiError::timeout(format!(
            "the request body did not arrive within {} s; send it whole, or ask the operator for a longer --body-timeout",
            deadline.as_secs()
        ))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Place;

    #[test]
    fn an_address_holds_at_most_its_cap_of_connections() {
        let addresses: Places<IpAddr> = Places::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let held: Vec<Place<IpAddr>> = (0..3).map(|_| addresses.take(&a, 3).unwrap()).collect();
        assert!(addresses.take(&a, 3).is_none());
        assert!(addresses.take(&b, 3).is_some());
        drop(held);
        assert!(addresses.take(&a, 3).is_some());
        assert_eq!(addresses.holders(), 0);
    }
}

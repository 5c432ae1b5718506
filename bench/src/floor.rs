//! The floor server: a bare hyper 1 server (tokio, HTTP/1.1 and HTTP/2 like the gateway) that
//! reads each POST body whole and answers a fixed JSON body of a given size. It is what any
//! HTTP server must do around an inference, without the inference: the physical limit of the
//! exchange the gateway's requests are measured against.

use std::convert::Infallible;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A JSON object of exactly `bytes` bytes (at least 10).
pub fn fixed_body(bytes: usize) -> Vec<u8> {
    let pad = bytes.saturating_sub(10);
    format!("{{\"pad\":\"{}\"}}", "x".repeat(pad)).into_bytes()
}

/// Serves on `listen` until killed; prints `floor listening on http://ADDR` once bound.
pub fn serve(listen: &str, response_bytes: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        println!("floor listening on http://{}", listener.local_addr()?);
        let body = Bytes::from(fixed_body(response_bytes));
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let body = body.clone();
                    async move {
                        // Read the request whole, as the gateway must before decoding it.
                        let read = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                        std::hint::black_box(read);
                        let response = Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(body))
                            .unwrap_or_default();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod tests {
    #[test]
    fn the_fixed_body_has_the_asked_size_and_is_json() {
        for n in [10, 11, 200, 4096] {
            let body = super::fixed_body(n);
            assert_eq!(body.len(), n);
            let _: serde_json::Value = serde_json::from_slice(&body).unwrap();
        }
    }
}

//! Posting drift events to a webhook (plain HTTP), on a short-lived thread so a slow receiver
//! never holds up the tap.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use flywheel_registry::DriftEvent;

use crate::metrics::WEBHOOK_FAILURES;

/// Splits `http://host:port/path` into (host:port, path).
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest =
        url.strip_prefix("http://").ok_or_else(|| format!("drift.webhook must be an http:// URL, given {url:?}"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    if authority.is_empty() {
        return Err(format!("drift.webhook has no host, given {url:?}"));
    }
    let authority = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
    Ok((authority, path))
}

/// Posts `event` as JSON to `url` in the background; failures are logged and counted.
pub fn post(url: &str, event: &DriftEvent) {
    let (url, body) = (url.to_owned(), serde_json::to_vec(event).unwrap_or_default());
    let model = event.model.clone();
    let spawned = std::thread::Builder::new().name("drift-webhook".into()).spawn(move || {
        if let Err(e) = send(&url, &body) {
            tracing::warn!(%url, error = %e, "drift webhook failed");
            metrics::counter!(WEBHOOK_FAILURES, "model" => model).increment(1);
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "drift webhook thread not started");
    }
}

fn send(url: &str, body: &[u8]) -> Result<(), String> {
    let (authority, path) = parse_url(url)?;
    let addr = authority.to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or("no address")?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).map_err(|e| e.to_string())?;
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).map_err(|e| e.to_string())?;
    match &status[9..10] {
        b"2" => Ok(()),
        _ => Err(format!("answered {}", String::from_utf8_lossy(&status))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_and_checked() {
        assert_eq!(parse_url("http://hooks.local:9000/drift").unwrap(), ("hooks.local:9000".into(), "/drift".into()));
        assert_eq!(parse_url("http://hooks.local").unwrap(), ("hooks.local:80".into(), "/".into()));
        assert!(parse_url("https://x").unwrap_err().contains("http://"));
    }

    #[test]
    fn posts_the_event_as_json() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let receiver = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // Headers and body may arrive in separate reads: read until the body is whole.
            let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
            let whole = |got: &[u8]| {
                let text = String::from_utf8_lossy(got);
                let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                body.len() >= length
            };
            while !whole(&got) {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "the client closed before sending its body");
                got.extend_from_slice(&buf[..n]);
            }
            stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        let event = DriftEvent {
            seq: 3,
            id: None,
            replica: None,
            model: "m".into(),
            version: 1,
            detector: "psi".into(),
            feature: "in_x_0".into(),
            statistic: 0.4,
            threshold: 0.2,
            window_rows: 10,
            window_start: "a".into(),
            window_end: "b".into(),
            time: "c".into(),
            sample_files: vec![],
        };
        send(&url, &serde_json::to_vec(&event).unwrap()).unwrap();
        let request = receiver.join().unwrap();
        assert!(request.starts_with("POST /hook HTTP/1.1"), "{request}");
        assert!(request.contains("\"feature\":\"in_x_0\""), "{request}");
    }
}

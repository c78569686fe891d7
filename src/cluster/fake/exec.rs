//! The exec subresource for real: a loopback HTTP server that upgrades exec requests to a
//! websocket and bridges a local process to its channels.

use http::{Request, Response};
use kube::Client;
use serde_json::json;

use super::{Cluster, Full, NS, status};

/// The exec subresource for real: an HTTP server on loopback that upgrades
/// `GET /api/v1/namespaces/NS/pods/POD/exec?command=...` to a websocket (`v4.channel.k8s.io`) and
/// runs the command here, `program` standing in for the image's binary (the command's first
/// word): stdout/stderr go out on channels 1/2, channel 0 feeds its stdin, channel 3 carries the
/// final Status. Pods named `forbidden-*` get a 403 Status instead. Returns a client for it.
pub async fn exec_server(program: std::path::PathBuf) -> Cluster {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let program = program.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| upgrade(req, program.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    let mut config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    config.default_namespace = NS.into();
    Cluster {
        client: Client::try_from(config).unwrap(),
        context: "exec-test".into(),
        namespace: NS.into(),
    }
}

async fn upgrade(
    mut req: Request<hyper::body::Incoming>,
    program: std::path::PathBuf,
) -> Result<Response<Full>, http::Error> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

    let path = req.uri().path().to_string();
    let pod = path
        .strip_suffix("/exec")
        .and_then(|p| p.rsplit('/').next())
        .unwrap_or("");
    if pod.starts_with("forbidden") {
        let (_, body) = status(
            403,
            "Forbidden",
            &format!(
                "pods \"{pod}\" is forbidden: User \"dev\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"{NS}\""
            ),
        );
        return Response::builder()
            .status(403)
            .header("content-type", "application/json")
            .body(Full::from(serde_json::to_vec(&body).unwrap()));
    }
    let command: Vec<String> = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.into_owned())
        .collect();
    let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            run_exec(ws, &program, &command).await;
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(&key))
        .header("sec-websocket-protocol", "v4.channel.k8s.io")
        .body(Full::default())
}

/// Runs the command as the container would, bridging its pipes to the websocket channels.
async fn run_exec<S>(ws: tokio_tungstenite::WebSocketStream<S>, program: &std::path::Path, command: &[String])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;

    let (mut sink, mut incoming) = ws.split();
    let mut child = tokio::process::Command::new(program)
        .args(command.iter().skip(1))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let pump = |mut from: Box<dyn tokio::io::AsyncRead + Unpin + Send>, channel: u8| {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut frame = vec![channel];
                frame.extend_from_slice(&buf[..n]);
                if tx.send(frame).await.is_err() {
                    break;
                }
            }
        })
    };
    let out = pump(Box::new(child.stdout.take().unwrap()), 1);
    let err = pump(Box::new(child.stderr.take().unwrap()), 2);
    drop(tx);
    // Channel 0 → the process' stdin, as long as the client sends.
    let feeder = tokio::spawn(async move {
        while let Some(Ok(msg)) = incoming.next().await {
            if let Message::Binary(b) = msg
                && b.first() == Some(&0)
                && (stdin.write_all(&b[1..]).await.is_err() || stdin.flush().await.is_err())
            {
                break;
            }
        }
    });
    while let Some(frame) = rx.recv().await {
        if sink.send(Message::binary(frame)).await.is_err() {
            break;
        }
    }
    let _ = (out.await, err.await);
    let code = child.wait().await.map(|s| s.code().unwrap_or(-1)).unwrap_or(-1);
    let status = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
               "message": format!("command terminated with non-zero exit code: {code}")})
    };
    let mut frame = vec![3u8];
    frame.extend_from_slice(&serde_json::to_vec(&status).unwrap());
    let _ = sink.send(Message::binary(frame)).await;
    let _ = sink.close().await;
    feeder.abort();
}

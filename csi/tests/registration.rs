//! The kubelet's view of plugin registration: a `Registration` client on the socket the plugin
//! creates in the registration directory, as the kubelet's plugin watcher dials it.

use std::path::{Path, PathBuf};
use strata_csi::DRIVER_NAME;
use strata_csi::pluginregistration::registration_client::RegistrationClient;
use strata_csi::pluginregistration::{InfoRequest, RegistrationStatus};
use tonic::transport::{Channel, Endpoint, Uri};

/// The `:authority` the kubelet's plugin watcher sends: it dials the socket by its path, and
/// grpc-go percent-encodes every byte an RFC 3986 authority does not allow (grpc-go's
/// `encodeAuthority`).
fn kubelet_authority(socket: &Path) -> String {
    socket
        .to_str()
        .unwrap()
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            b'-' | b'_' | b'.' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+'
            | b',' | b';' | b'=' | b':' | b'[' | b']' | b'@' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A client on `socket` that sends the kubelet's `:authority`. Building it fails if the server
/// (h2, through the same `http` parser) would reset the kubelet's calls.
async fn connect(socket: PathBuf) -> Channel {
    let uri = format!("http://{}", kubelet_authority(&socket));
    Endpoint::try_from(uri.clone())
        .unwrap_or_else(|e| panic!("the kubelet's authority {uri} is refused: {e}"))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_kubelet_learns_the_driver_and_its_host_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = strata_csi::registration::socket_path(dir.path());
    assert_eq!(
        socket.file_name().unwrap().to_str().unwrap(),
        "csi.strata.dev-reg@localhost.sock",
        "an @ in the name, for the authority the kubelet derives from the path"
    );
    let listener = strata_csi::server::bind(&socket).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let kubelet_endpoint = "/var/lib/kubelet/plugins/csi.strata.dev/csi.sock";
    let server = tokio::spawn(strata_csi::server::serve_registration(
        listener,
        kubelet_endpoint.into(),
        async {
            let _ = stopped.await;
        },
    ));

    let mut client = RegistrationClient::new(connect(socket).await);
    let info = client.get_info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.r#type, "CSIPlugin");
    assert_eq!(info.name, DRIVER_NAME);
    assert_eq!(info.endpoint, kubelet_endpoint);
    assert_eq!(info.supported_versions, ["1.0.0"]);

    // Both outcomes are acknowledged: a refusal is logged and the kubelet retries.
    for (plugin_registered, error) in [(true, ""), (false, "driver name clash")] {
        client
            .notify_registration_status(RegistrationStatus {
                plugin_registered,
                error: error.into(),
            })
            .await
            .unwrap();
    }

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

//! The TCP API needs the bearer token; the unix socket and the health port do not.

use strata_testkit::agent as support;

use support::{TOKEN, TestAgent, raw_http};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_api_requires_the_bearer_token() {
    let agent = TestAgent::start().await;
    agent.add_dataset("ml", "imagenet").await;

    // No token: 401 with a JSON body naming the header.
    let err = agent.tcp(None).dataset("ml", "imagenet").await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401), "{err}");
    let (status, _, body) = raw_http(
        agent.listen,
        "GET /v1/datasets/ml/imagenet HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["field"], "authorization");
    assert!(body["error"].as_str().unwrap().contains("Bearer"));

    // Wrong token: 403, and the answer does not echo what was sent.
    let (status, _, body) = raw_http(
        agent.listen,
        "GET /v1/datasets/ml/imagenet HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer guess-123\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 403);
    assert!(!String::from_utf8_lossy(&body).contains("guess-123"));
    let err = agent
        .tcp(Some("wrong"))
        .dataset("ml", "imagenet")
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(403));
    // A token that is a prefix of the right one is still wrong.
    let err = agent
        .tcp(Some(&TOKEN[..10]))
        .dataset("ml", "imagenet")
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(403));

    // Right token: the dataset answers.
    let summary = agent
        .tcp(Some(TOKEN))
        .dataset("ml", "imagenet")
        .await
        .unwrap();
    assert_eq!(summary["name"], "imagenet");
    assert_eq!(summary["namespace"], "ml");

    // The peer token cannot register datasets over TCP: only the operator's Secret channel
    // and the local socket can, and the answer says so.
    let err = agent
        .tcp(Some(TOKEN))
        .put_dataset(
            "other",
            "steal",
            &serde_json::json!({"sources": [{"name": "etc", "uri": "file:///etc/"}]}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(403), "{err}");
    assert!(err.to_string().contains("strata-datasets"), "{err}");
    assert!(agent.local().dataset("other", "steal").await.is_err());
    // Nor take volumes, which are the CSI plugin's, over the local socket only.
    let err = agent
        .tcp(Some(TOKEN))
        .acquire_volume("ml", "imagenet", "v1", None)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(403), "{err}");

    // Unauthenticated TCP callers cannot mount or preload either.
    let err = agent
        .tcp(None)
        .acquire_volume("ml", "imagenet", "v1", None)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401));

    // The unix socket is trusted by its file mode, which only root and the group can use.
    assert!(agent.local().dataset("ml", "imagenet").await.is_ok());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&agent.socket).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o660);

    // Health is open on the TCP port, health and metrics on the metrics port.
    let (status, _, _) = raw_http(
        agent.listen,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, body) = raw_http(
        agent.metrics,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, head, body) = raw_http(
        agent.metrics,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        head.to_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("strata_fetches_in_flight"), "{text}");
    // The API is not served on the metrics port.
    let (status, _, _) = raw_http(
        agent.metrics,
        "GET /v1/datasets HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);

    agent.stop().await;
}

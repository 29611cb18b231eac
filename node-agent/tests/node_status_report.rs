//! The StrataNode report and the HTTP API together: a Job's preload through the API
//! shows up in the report (`node_status::status_of`) while it runs and after it ends.
#![cfg(feature = "node-status")]

use std::sync::Arc;
use std::time::Duration;

use strata_agent::agent::{Agent, AgentConfig};
use strata_agent::config::{DatasetConfig, SourceConfig};
use strata_agent::fuse::MountOptions;
use strata_agent::http::client::AgentClient;
use strata_agent::http::{Access, ApiState, api_routes};
use strata_agent::mounts::MountRegistry;
use strata_agent::node_status::status_of;
use strata_crds::JobPhase;

/// Dataset `ml/NAME` over a local directory.
fn local_dataset(name: &str, uid: Option<&str>, dir: &std::path::Path) -> DatasetConfig {
    DatasetConfig {
        namespace: "ml".into(),
        name: name.into(),
        uid: uid.map(str::to_string),
        sources: vec![SourceConfig {
            name: "dir".into(),
            uri: format!("file://{}", dir.display()),
            ..SourceConfig::default()
        }],
        ..DatasetConfig::default()
    }
}

/// A real preload over the agent's HTTP API, asked for by a Job: while it runs
/// the report shows it Running, afterwards Succeeded with every byte counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_preload_shows_up_in_the_report() {
    let data = tempfile::tempdir().unwrap();
    for i in 0..48 {
        std::fs::write(
            data.path().join(format!("f{i}.bin")),
            vec![i as u8; 1 << 20],
        )
        .unwrap();
    }
    let cache = tempfile::tempdir().unwrap();
    let agent = Agent::new(AgentConfig::new(cache.path(), 8 << 20, 256 << 20))
        .await
        .unwrap();
    agent
        .add_dataset(local_dataset("local", Some("u-1"), data.path()))
        .await
        .unwrap();
    let mounts =
        Arc::new(MountRegistry::new(&cache.path().join("mnt"), MountOptions::default()).unwrap());
    let state = ApiState::new(agent.clone(), mounts);
    let socket = cache.path().join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let routes = api_routes(state.clone(), Access::Local);
    tokio::spawn(warp::serve(routes).incoming(listener).run());

    // Watch the report while the preload runs.
    let watcher = {
        let (agent, activity) = (agent.clone(), state.activity.clone());
        tokio::spawn(async move {
            loop {
                let status = status_of(&agent, &activity);
                if let Some(run) = status.datasets[0].jobs.first()
                    && run.phase == JobPhase::Running
                {
                    return run.clone();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let client = AgentClient::unix(&socket).with_job(Some("preload-local-0a1b2c3d".into()));
    let last = client
        .preload("ml", "local", &["/**".to_string()], |_| {})
        .await
        .unwrap();
    assert_eq!(last.bytes_done, 48 << 20);
    let running = tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the report never showed the run as Running")
        .unwrap();
    assert_eq!(running.job, "preload-local-0a1b2c3d");
    assert!(running.completion_time.is_none() && running.start_time.is_some());

    let report = status_of(&agent, &state.activity).datasets.remove(0);
    assert_eq!(report.uid.as_deref(), Some("u-1"));
    assert_eq!(report.jobs.len(), 1);
    let done = &report.jobs[0];
    assert_eq!(done.phase, JobPhase::Succeeded);
    assert_eq!((done.files_done, done.files_total), (48, 48));
    assert_eq!((done.bytes_done, done.bytes_total), (48 << 20, 48 << 20));
    assert!(done.completion_time.is_some() && done.message.is_none());
    assert!(report.last_error.is_none());
}

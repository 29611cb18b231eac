//! CSI Identity: who the plugin is and whether the node's agent is ready.

use crate::DRIVER_NAME;
use crate::proto::identity_server::Identity;
use crate::proto::plugin_capability::{Service, service};
use crate::proto::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse, plugin_capability,
};
use strata_wire::api::client::AgentClient;
use tonic::{Request, Response, Status};

pub struct IdentityService {
    agent: AgentClient,
}

impl IdentityService {
    pub fn new(agent: AgentClient) -> Self {
        IdentityService { agent }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER_NAME.to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        // No CONTROLLER_SERVICE: static volumes with attachRequired=false need no
        // controller calls (see docs/csi.md). Topology, because a volume is served
        // by the agent of the node that publishes it.
        let capabilities = vec![PluginCapability {
            r#type: Some(plugin_capability::Type::Service(Service {
                r#type: service::Type::VolumeAccessibilityConstraints as i32,
            })),
        }];
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        match self.agent.ready().await {
            Ok(_) => Ok(Response::new(ProbeResponse { ready: Some(true) })),
            // The agent answers but is still loading its datasets: healthy, not ready.
            Err(e) if e.status().is_some_and(|s| s.as_u16() == 503) => {
                Ok(Response::new(ProbeResponse { ready: Some(false) }))
            }
            Err(e) => {
                tracing::warn!(error = %e, "probe: node agent not healthy");
                Err(Status::unavailable(format!(
                    "the Strata agent on this node is not healthy: {e}"
                )))
            }
        }
    }
}

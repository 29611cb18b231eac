//! CSI Controller, the part a node-only driver still answers.
//!
//! Strata volumes are static: the operator creates one PersistentVolume per
//! Dataset with volume handle `NAMESPACE/DATASET`, and the CSIDriver has
//! `attachRequired: false`, so Kubernetes makes no controller call for them
//! (no CreateVolume, no ControllerPublish). The plugin therefore does not
//! advertise CONTROLLER_SERVICE. It still answers ControllerGetCapabilities
//! (tools such as csi-sanity ask unconditionally) and
//! ValidateVolumeCapabilities (to check a handle against the local agent).

use crate::CsiError;
use crate::proto::controller_server::Controller;
use crate::proto::controller_service_capability::{Rpc, rpc};
use crate::proto::validate_volume_capabilities_response::Confirmed;
use crate::proto::volume_capability::AccessType;
use crate::proto::{
    ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse,
    ControllerServiceCapability, ValidateVolumeCapabilitiesRequest,
    ValidateVolumeCapabilitiesResponse, controller_service_capability,
};
use crate::volume;
use strata_wire::api::client::AgentClient;
use tonic::{Request, Response, Status};

pub struct ControllerService {
    agent: AgentClient,
}

impl ControllerService {
    pub fn new(agent: AgentClient) -> Self {
        ControllerService { agent }
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn controller_get_capabilities(
        &self,
        _: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        // The one capability that is true of every Strata volume: many pods on a
        // node may share one (SINGLE_NODE_SINGLE_WRITER/MULTI_WRITER are accepted).
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![ControllerServiceCapability {
                r#type: Some(controller_service_capability::Type::Rpc(Rpc {
                    r#type: rpc::Type::SingleNodeMultiWriter as i32,
                })),
            }],
        }))
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id", "is required").into());
        }
        if req.volume_capabilities.is_empty() {
            return Err(
                CsiError::invalid("volume_capabilities", "at least one is required").into(),
            );
        }
        let spec = volume::resolve(&req.volume_id, &req.volume_context)?;
        if let Err(e) = self.agent.dataset(&spec.namespace, &spec.dataset).await {
            if e.status().is_some_and(|s| s.as_u16() == 404) {
                return Err(CsiError::NotFound(format!(
                    "dataset {} is not known to the Strata agent",
                    spec.qualified_name()
                ))
                .into());
            }
            return Err(CsiError::agent("looking up the dataset", e).into());
        }
        let block = req
            .volume_capabilities
            .iter()
            .any(|c| !matches!(c.access_type, Some(AccessType::Mount(_))));
        if block {
            return Ok(Response::new(ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: "Strata volumes are file systems: only mount access is supported"
                    .to_string(),
            }));
        }
        Ok(Response::new(ValidateVolumeCapabilitiesResponse {
            confirmed: Some(Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
            }),
            message: String::new(),
        }))
    }
}

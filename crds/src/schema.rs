//! Hand-written schemas for fields whose Rust type does not map to a
//! structural Kubernetes schema by itself.

use schemars::{Schema, SchemaGenerator, json_schema};

/// A Kubernetes quantity (`4Mi`, `200Gi`, or a plain integer), as the core API
/// types declare it: integer or string. The CEL rules on each field check the value.
pub(crate) fn quantity(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        // kube marks optional int-or-string fields nullable; a null would then be
        // stored instead of the default and break deserialization. Without
        // nullable the API server drops a null and applies the default.
        "nullable": false,
        "maxLength": 64,
    })
}

/// `replicas`: a whole number or the string `All`.
pub(crate) fn replicas(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        // kube marks optional int-or-string fields nullable; a null would then be
        // stored instead of the default and break deserialization. Without
        // nullable the API server drops a null and applies the default.
        "nullable": false,
        "maxLength": 8,
    })
}

/// Pin/preload `paths`: 1-32 globs, each starting with `/`, without `..`.
pub(crate) fn path_globs(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 32,
        "items": {
            "type": "string",
            "maxLength": 1024,
            "x-kubernetes-validations": [{
                "rule": "self.startsWith('/') && !self.matches('(^|/)\\\\.\\\\.(/|$)')",
                "message": crate::validation::MSG_GLOB,
            }, {
                "rule": crate::validation::NO_CONTROL_RULE,
                "message": crate::validation::MSG_GLOB_CONTROL,
            }],
        },
    })
}

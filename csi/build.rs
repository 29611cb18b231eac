//! Compiles the CSI v1 protobuf subset and the kubelet's plugin registration API with protox,
//! so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    println!("cargo:rerun-if-changed=proto/pluginregistration.proto");
    let descriptors = protox::compile(
        ["proto/csi.proto", "proto/pluginregistration.proto"],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}

//! Generates the gRPC wire types and the `Control` client and server from
//! `protos/clustersync/v1/*.proto` into `OUT_DIR` (protoc must be installed: Debian's
//! `protobuf-compiler`, or `PROTOC` pointing at a binary).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["protos/clustersync/v1/control.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure().build_client(true).build_server(true).compile_protos(&protos, &["protos"])?;
    Ok(())
}

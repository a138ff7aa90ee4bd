//! Generates the KMS gRPC code (plugin APIs v1beta1 and v2) and the KMS v2 storage envelope message.
//! Used by `atrest::exec::kms` (pre-flight Status checks) and by the testbed KMS plugin.
//! Needs `protoc` (Debian `protobuf-compiler`, installed by scripts/prereqs.sh).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/kms/apis/v1beta1/api.proto",
        "proto/kms/apis/v2/api.proto",
        "proto/kmsv2/v2/api.proto",
    ];
    tonic_prost_build::configure()
        // Deterministic annotation order when encoding, and sorted iteration for the DEK cache key.
        .btree_map(".")
        // These messages carry a plaintext DEK/seed: no Debug impl, so it can never be logged.
        .skip_debug([
            "v1beta1.EncryptRequest",
            "v1beta1.DecryptResponse",
            "v2.EncryptRequest",
            "v2.DecryptResponse",
        ])
        .compile_protos(&protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}

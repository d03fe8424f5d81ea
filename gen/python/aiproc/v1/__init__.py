"""Generated protobuf and gRPC stubs of the aiproc.v1 contract. Do not edit."""

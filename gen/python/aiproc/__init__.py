"""aiproc: background LLM enhancement of web content over gRPC."""

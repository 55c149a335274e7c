#!/usr/bin/env bash
# Generates every binding of proto/ (never edit the output by hand):
#   ts-server/generated, ts-client/generated  ts-proto (grpc-js services)
#   python-runner/mur/_proto                   protoc (with .pyi type stubs for mypy) + grpc_python_plugin
set -euo pipefail
cd "$(dirname "$0")/.."
PROTO=proto/mur/v1/optimizer.proto
PLUGIN=node_modules/.bin/protoc-gen-ts_proto
OPTS="outputServices=grpc-js,env=node,esModuleInterop=true,forceLong=number,useOptionals=messages,oneof=unions-value"
for out in ts-server/generated ts-client/generated; do
  rm -rf "$out" && mkdir -p "$out"
  protoc --plugin="protoc-gen-ts_proto=$PLUGIN" --ts_proto_out="$out" --ts_proto_opt="$OPTS" -I proto "$PROTO"
done
# The descriptor set server reflection serves: every file with its real name
# and its imports (google/protobuf/struct.proto), plus grpc.health.v1.
protoc --include_imports --descriptor_set_out=ts-server/generated/descriptor.pb \
  -I proto -I node_modules/grpc-health-check/proto "$PROTO" health/v1/health.proto
py=python-runner/mur/_proto
rm -rf "$py" && mkdir -p "$py"
protoc -I proto --python_out="$py" --pyi_out="$py" --grpc_out="$py" --plugin=protoc-gen-grpc="$(command -v grpc_python_plugin)" "$PROTO"
# Make the generated tree a package whose absolute imports (mur.v1...) resolve.
find "$py" -type d -exec touch {}/__init__.py \;
sed -i 's/^from mur\.v1 import/from mur._proto.mur.v1 import/' "$py"/mur/v1/*_pb2_grpc.py
echo "generated: ts-server/generated ts-client/generated $py"

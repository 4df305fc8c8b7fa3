#!/usr/bin/env bash
# Regenerate every generated package from proto/ with buf (local plugins only).
#   aistream/v1/       protobuf messages, .pyi stubs, grpcio stubs   (hot path)
#   aistream_client/   betterproto2 dataclasses + clients             (SDK)
#   webclient/src/generated/frames.ts   TypeScript types of the JSON frames
# Usage: scripts/generate.sh [OUTPUT_ROOT]   (default: the repository root)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
export PATH="$root/.venv/bin:$PATH"
cd "$root"
rm -rf "$out/aistream_client" "$out/webclient/src/generated"
find "$out/aistream/v1" -name '*_pb2*.py*' -delete 2>/dev/null || true
buf generate --output "$out"

#!/usr/bin/env bash
# Validate every manifest in this folder (and the Secret example in ../examples) against the Kubernetes schemas bundled with kubernetes-validate
# (installed from PyPI when absent; no network is needed for the schemas themselves).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="${KUBERNETES_VERSION:-1.30.0}"
if ! command -v kubernetes-validate >/dev/null 2>&1; then
    python3 -m pip install --quiet kubernetes-validate
fi
# --strict rejects unknown fields, which catches typos such as `readOnlyRootFileSystem`.
kubernetes-validate --strict -k "$version" "$here"/*.yaml "$here/../examples/secret.example.yaml"

# The ConfigMap's countersign.toml must also pass the gateway's own check, when a binary is at hand.
bin="${COUNTERSIGN_BIN:-$here/../../target/debug/countersign}"
if [ -x "$bin" ]; then
    toml="$(mktemp)"
    trap 'rm -f "$toml"' EXIT
    python3 - "$here/configmap.yaml" "$toml" <<'PY'
import sys
text = open(sys.argv[1]).read().split("countersign.toml: |\n", 1)[1]
open(sys.argv[2], "w").write("\n".join(line[4:] for line in text.splitlines()) + "\n")
PY
    "$bin" --config "$toml" check-config --skip-secrets
else
    echo "note: no countersign binary at $bin; skipped checking the ConfigMap's countersign.toml" >&2
fi

#!/usr/bin/env bash
# make kind-e2e: a kind cluster, the gpugate image built and loaded, the chart installed with a simulator
# GpuBackend, a Tenant and an ApiKey, and one completion through the data plane. Needs docker, kind, kubectl
# and helm on PATH. Not run on our machines (no Docker engine there).
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=${KIND_CLUSTER:-gpugate-e2e}
IMAGE=gpugate:e2e
NS=gpugate-system
for tool in docker kind kubectl helm; do command -v "$tool" >/dev/null || { echo "kind-e2e needs $tool on PATH" >&2; exit 2; }; done

cleanup() { [ "${KEEP_CLUSTER:-}" = 1 ] || kind delete cluster --name "$CLUSTER"; }
trap cleanup EXIT

kind create cluster --name "$CLUSTER" --wait 120s
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

helm install gpugate charts/gpugate -n "$NS" --create-namespace --wait --timeout 5m \
  --set image.repository=gpugate --set image.tag=e2e --set image.pullPolicy=Never \
  --set postgres.bundled.enabled=true --set postgres.bundled.persistence.enabled=false \
  --set dataplane.autoscaling.enabled=false --set dataplane.replicas=1

# The GPU simulator: test/fixtures/gpusim from a ConfigMap, run by the gpugate image's Node (mounted under /app so
# its imports resolve against the image's node_modules).
kubectl create namespace team-a
kubectl -n team-a create configmap gpusim --from-file=test/fixtures/gpusim
kubectl apply -n team-a -f - <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: { name: gpusim }
spec:
  selector: { matchLabels: { app: gpusim } }
  template:
    metadata: { labels: { app: gpusim } }
    spec:
      containers:
        - name: gpusim
          image: gpugate:e2e
          imagePullPolicy: Never
          command: ["node", "/app/test/fixtures/gpusim/main.ts", "--host", "0.0.0.0", "--port", "8000", "--models", "sim-llama-8b"]
          ports: [{ containerPort: 8000 }]
          volumeMounts: [{ name: sim, mountPath: /app/test/fixtures/gpusim }]
      volumes: [{ name: sim, configMap: { name: gpusim } }]
---
apiVersion: v1
kind: Service
metadata: { name: gpusim }
spec:
  selector: { app: gpusim }
  ports: [{ port: 8000, targetPort: 8000 }]
---
apiVersion: gpugate.io/v1alpha1
kind: GpuBackend
metadata: { name: sim }
spec:
  models: [sim-llama-8b]
  protocol: openai
  endpoints: [{ url: "http://gpusim.team-a.svc:8000" }]
---
apiVersion: gpugate.io/v1alpha1
kind: Tenant
metadata: { name: team-a }
spec: {}
---
apiVersion: gpugate.io/v1alpha1
kind: ApiKey
metadata: { name: team-a-first }
spec: { tenant: team-a }
YAML
kubectl -n team-a rollout status deployment/gpusim --timeout=120s
kubectl -n team-a wait --for=condition=Ready apikey/team-a-first --timeout=120s
KEY=$(kubectl -n team-a get secret team-a-first-gpugate-key -o jsonpath='{.data.key}' | base64 -d)

kubectl -n "$NS" port-forward service/gpugate-dataplane 18080:80 >/dev/null &
PF=$!
trap 'kill $PF 2>/dev/null; cleanup' EXIT
for _ in $(seq 1 60); do curl -fsS -o /dev/null http://127.0.0.1:18080/ 2>/dev/null && break; sleep 1; done
answer=$(curl -fsS http://127.0.0.1:18080/v1/chat/completions -H "Authorization: Bearer $KEY" \
  -H 'content-type: application/json' -d '{"model":"sim-llama-8b","messages":[{"role":"user","content":"hi"}],"max_tokens":8}')
echo "$answer" | grep -q '"choices"' || { echo "no completion: $answer" >&2; exit 1; }
echo "kind-e2e: completion served for tenant team-a through gpugate"

# syntax=docker/dockerfile:1
# One image, two programs: `node operator/main.ts` and `node dataplane/main.ts` (Node 24 runs the TypeScript
# directly; no build step). The chart sets the command of each Deployment. The data plane runs with the
# Node.js flags of dataplane/node-flags.ts (why: there), here, in the chart and in the operator's sidecar.
ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS deps
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json .npmrc ./
# Production dependencies only; install scripts run only where package.json allows them (npm 11).
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM ${NODE_IMAGE} AS runtime
WORKDIR /app
ENV NODE_ENV=production
# tini-like signal handling is not needed: both programs handle SIGTERM themselves and run as PID 1.
COPY --from=deps --chown=10001:10001 /app/node_modules ./node_modules
COPY --chown=10001:10001 package.json ./
COPY --chown=10001:10001 dataplane ./dataplane
COPY --chown=10001:10001 operator ./operator
COPY --chown=10001:10001 crds ./crds
# The same uid/gid as the chart's securityContext; numeric, so runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8080 9090 8082
CMD ["node", "--scavenger-max-new-space-capacity-mb=4", "--no-concurrent-array-buffer-sweeping", "dataplane/main.ts"]

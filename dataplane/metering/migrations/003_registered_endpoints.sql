-- Self-registered endpoints of GpuBackends with spec.registration (docs/operator.md, "Self-registration").
-- Any data-plane replica records a registration here (POST /webhook/register, after checking the
-- backend's shared secret); the operator reads the live rows into the snapshot (source 'registered')
-- and into GpuBackend status. A row is live while expires_at is in the future: a server that stops
-- renewing drops out after the backend's registration.ttl. Database time (now()) decides expiry, so
-- replica and operator clocks do not matter.
CREATE TABLE registered_endpoints (
  -- GpuBackend id, namespace/name.
  backend        text        NOT NULL,
  url            text        NOT NULL,
  registered_at  timestamptz NOT NULL DEFAULT now(),
  renewed_at     timestamptz NOT NULL DEFAULT now(),
  expires_at     timestamptz NOT NULL,
  PRIMARY KEY (backend, url)
);

-- The operator's read (live rows) and its sweep of long-expired rows.
CREATE INDEX registered_endpoints_expires ON registered_endpoints (expires_at);

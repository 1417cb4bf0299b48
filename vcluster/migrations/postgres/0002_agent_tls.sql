-- Issue 17: the controller pins each host agent's TLS certificate by the SHA-256
-- fingerprint the agent sent when it registered (NULL: the agent speaks plain HTTP,
-- allowed only on loopback or for a controller started with --insecure).
ALTER TABLE hosts ADD COLUMN agent_cert_sha256 TEXT;

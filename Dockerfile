# syntax=docker/dockerfile:1
#
# runbook-worker container image: a static musl binary on distroless (target: under 30 MB).
#
#   deploy/build-image.sh --tag runbook-worker:dev      (or: docker build -t runbook-worker:dev .)
#   token=$(openssl rand -hex 32); echo "dashboard password: $token"
#   docker run --rm -p 8080:8080 -e RUNBOOK_WORKER__HTTP__API_TOKEN="$token" -v "$PWD/runbooks:/runbooks:ro" runbook-worker:dev --simulate
#   then open http://localhost:8080/ and sign in with any user name and the token as password
#   (the image listens on 0.0.0.0, where every read needs the token; see README "Who may do what")
#
# Settings come from RUNBOOK_WORKER__SECTION__KEY variables or a runbook-worker.toml mounted
# into /etc/runbook-worker (the working directory). Secrets (the API token, a SAS URL) are
# given at run time as variables or files, never baked into the image.
#
# The runtime image has no shell and no curl, so the HEALTHCHECK runs the binary itself:
# `runbook-worker probe` GETs /healthz on the local listen address and exits 0 or 1.
# Orchestrators probe GET /healthz (liveness) and GET /readyz (readiness) on port 8080
# directly; see README "Probes and graceful shutdown".

# ---- build stage ---------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

# musl-tools provides musl-gcc, which the cc crate uses for the C parts: aws-lc-sys (rustls'
# crypto provider; it ships pre-generated bindings for x86_64-unknown-linux-musl, so neither
# cmake, clang nor bindgen is needed, and it detects that musl-gcc has no <linux/random.h> and
# uses getentropy() instead) and the SQLite that rusqlite bundles.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl

WORKDIR /src
COPY . .

# .git is not in the build context (.dockerignore); `--version` names the commit it is given.
ARG GIT_COMMIT=unknown
ENV RUNBOOK_WORKER_GIT_COMMIT=${GIT_COMMIT}

# The cache mounts keep the registry and target/ between builds (BuildKit, or Podman); the
# binary is copied out of the cache because cache mounts are not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bin runbook-worker \
 && install -D -m 0755 target/x86_64-unknown-linux-musl/release/runbook-worker /out/usr/local/bin/runbook-worker

# Empty mount points for the runtime stage.
RUN install -d -m 0755 /out/state /out/runbooks

# ---- runtime stage -------------------------------------------------------------------------
# distroless/static: CA certificates (/etc/ssl/certs), /etc/passwd with nonroot (65532) and
# tzdata; no shell, no package manager. Time zones do not depend on the image's tzdata:
# chrono-tz compiles the IANA database into the binary.
FROM gcr.io/distroless/static-debian12:nonroot

ARG VERSION=dev
LABEL org.opencontainers.image.title="runbook-worker" \
      org.opencontainers.image.description="Runs Exchange Online admin runbooks on a schedule with an Azure managed identity" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"

COPY --from=builder /out/usr/local/bin/runbook-worker /usr/local/bin/runbook-worker
COPY --from=builder /out/runbooks /runbooks
# Owned by the runtime user so that a fresh anonymous volume on /state (initialised from this
# directory) is writable without a root init step.
COPY --from=builder --chown=65532:65532 /out/state /state

ENV RUNBOOK_WORKER__RUNBOOKS__DIR=/runbooks \
    RUNBOOK_WORKER__STATE__DIR=/state \
    RUNBOOK_WORKER__HTTP__LISTEN=0.0.0.0:8080 \
    RUNBOOK_WORKER__LOG__FORMAT=json \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

WORKDIR /etc/runbook-worker
USER 65532:65532
EXPOSE 8080
VOLUME ["/runbooks", "/state"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/runbook-worker", "probe"]

# SIGTERM starts the graceful shutdown (worker.shutdown_grace, 25 s by default).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/runbook-worker", "serve"]

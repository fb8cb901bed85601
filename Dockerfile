# The image the Kubernetes manifests run (manifests/kubernetes/deployment.yaml): the `countersign` binary on a
# distroless base, as the non-root user 65532 the Deployment's securityContext expects.
#   docker build -t countersign:0.1.0 .
# Build stage: the toolchain CI tests with; ring and the bundled SQLite need
# only a C compiler, which the official Rust image has.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p countersign-gateway --bin countersign \
    && install -D target/release/countersign /out/countersign

# Runtime: glibc and CA certificates (for OIDC discovery, Slack, Jira and SMTP over TLS), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/countersign /usr/local/bin/countersign
# The SQLite store's default data directory; mount a volume here, or use a PostgreSQL store for replicas.
WORKDIR /var/lib/countersign
USER 65532:65532
EXPOSE 8080 6432
ENTRYPOINT ["/usr/local/bin/countersign"]
CMD ["serve"]

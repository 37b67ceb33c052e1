# Sigil's build. `make run` starts a dev authority; `make test` installs what
# tests need (scripts/deps.sh) and runs every test, e2e included.
GO ?= go
BIN := bin/sigil
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
STATICCHECK_VERSION := v0.8.2
GOBIN_DIR := $(CURDIR)/bin/tools
export CGO_ENABLED := 1

.PHONY: build run test lint proto bench deps clean

build:
	$(GO) build -trimpath -o $(BIN) ./cmd/sigil

run: build
	./$(BIN) server --dev

deps:
	bash scripts/deps.sh

test: deps
	$(GO) test -race -timeout 14m ./...

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

bench: deps
	$(GO) test -run '^$$' -bench . -benchtime 2s ./...

clean:
	rm -rf bin

#!/usr/bin/env bash
# bench-compare: Sigil against step-ca, side by side, on this machine.
#
# Installs step-ca at a pinned version into a temporary directory (nothing
# of it is kept), configures it on loopback with a JWK provisioner and a
# badger store (sigil-bench stepca-setup: no `step` CLI needed), starts a
# throwaway Sigil dev server, and runs the same `sign` scenario against
# both, then the same `acme` scenario (lego clients, http-01), alternating
# A B A B, printing each pair's Sigil/step-ca ratio. Each is run once per
# Sigil storage: the embedded SQLite, then a throwaway PostgreSQL with its
# default durability (sigil-bench --dev-storage postgres).
# Exits non-zero, saying why, if step-ca cannot be installed or started.
#
# Environment: DURATION (per run, default 10s), CLIENTS (default 1,16),
# ROUNDS (default 2), STORAGES (default sqlite,postgres), STEPCA_VERSION
# (default v0.30.2), JSON_OUT (file for the JSON report; one per scenario
# and storage), ACME_REQUEST_LIMIT (lego's requests per second; default
# lego's 18, i.e. a 55 ms pause in every enrollment), GO (default go).
set -euo pipefail

GO=${GO:-go}
STEPCA_VERSION=${STEPCA_VERSION:-v0.30.2}
DURATION=${DURATION:-10s}
CLIENTS=${CLIENTS:-1,16}
ROUNDS=${ROUNDS:-2}
STORAGES=${STORAGES:-sqlite,postgres}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sigil-bench-compare.XXXXXX")
STEPCA_PID=""

cleanup() {
	if [ -n "$STEPCA_PID" ] && kill -0 "$STEPCA_PID" 2>/dev/null; then
		kill "$STEPCA_PID" 2>/dev/null || true
		wait "$STEPCA_PID" 2>/dev/null || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf 'bench-compare: %s\n' "$*" >&2; }

cd "$ROOT"
say "building sigil and sigil-bench"
CGO_ENABLED=1 "$GO" build -trimpath -o bin/sigil ./cmd/sigil
CGO_ENABLED=1 "$GO" build -trimpath -o "$WORK/sigil-bench" ./cmd/sigil-bench

# step-ca's YubiKey support needs libpcsclite through cgo; the side-by-side
# run uses only its software keys, so it is built without cgo.
say "installing step-ca $STEPCA_VERSION into $WORK/bin (takes a minute or two)"
mkdir -p "$WORK/bin"
if ! (cd "$WORK" && CGO_ENABLED=0 GOBIN="$WORK/bin" GOFLAGS=-mod=mod \
	"$GO" install "github.com/smallstep/certificates/cmd/step-ca@$STEPCA_VERSION") >"$WORK/install.log" 2>&1; then
	tail -20 "$WORK/install.log" >&2
	say "FAILED: step-ca $STEPCA_VERSION could not be installed on this machine; no comparison made"
	exit 1
fi

free_port() {
	local p
	for _ in $(seq 1 50); do
		p=$((20000 + RANDOM % 20000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

PORT=$(free_port) || { say "FAILED: no free port for step-ca"; exit 1; }
# The acme scenario's DNS (answering the benchmark zone with 127.0.0.1) is
# served by sigil-bench on this port; step-ca resolves through it.
DNS_PORT=$(free_port) || { say "FAILED: no free port for the benchmark DNS"; exit 1; }
mkdir -p "$WORK/stepca"
"$WORK/sigil-bench" stepca-setup --dir "$WORK/stepca" --addr "127.0.0.1:$PORT"
say "starting step-ca on 127.0.0.1:$PORT (badger in $WORK/stepca/db)"
"$WORK/bin/step-ca" --resolver "127.0.0.1:$DNS_PORT" "$WORK/stepca/ca.json" >"$WORK/stepca.log" 2>&1 &
STEPCA_PID=$!
ready=""
for _ in $(seq 1 100); do
	# step-ca binds its port only once it is ready to serve.
	if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
		ready=1
		break
	fi
	if ! kill -0 "$STEPCA_PID" 2>/dev/null; then
		break
	fi
	sleep 0.2
done
if [ -z "$ready" ]; then
	tail -20 "$WORK/stepca.log" >&2
	say "FAILED: step-ca did not start listening within 20 s; no comparison made"
	exit 1
fi

# acme: step-ca validates http-01 on port 80 of the name, so the harness
# must answer there, which needs root (or CAP_NET_BIND_SERVICE).
acme=1
if [ "$(id -u)" -ne 0 ]; then
	acme=""
fi
for storage in ${STORAGES//,/ }; do
	case "$storage" in
	sqlite | postgres) ;;
	*) say "FAILED: STORAGES: $storage is not sqlite or postgres"; exit 1 ;;
	esac
	json=""
	if [ -n "${JSON_OUT:-}" ]; then
		json="${JSON_OUT%.json}-$storage"
	fi
	say "running sign on $storage: Sigil (A) and step-ca (B), $ROUNDS rounds, clients $CLIENTS, $DURATION each (load $(cut -d' ' -f1-3 /proc/loadavg))"
	args=(--start-dev --sigil-bin bin/sigil --dev-storage "$storage"
		--targets sigil,step-ca --rounds "$ROUNDS" -c "$CLIENTS" --duration "$DURATION"
		--stepca-url "https://127.0.0.1:$PORT" --stepca-root "$WORK/stepca/root_ca.crt"
		--stepca-provisioner "$WORK/stepca/provisioner.json" --stepca-pid "$STEPCA_PID")
	if [ -n "$json" ]; then
		args+=(--json-out "$json.json")
	fi
	"$WORK/sigil-bench" "${args[@]}"

	if [ -z "$acme" ]; then
		continue
	fi
	say "running acme on $storage: Sigil (A) and step-ca (B), $ROUNDS rounds, clients $CLIENTS, $DURATION each (load $(cut -d' ' -f1-3 /proc/loadavg))"
	args=(--scenario acme --start-dev --sigil-bin bin/sigil --dev-storage "$storage"
		--targets sigil,step-ca --rounds "$ROUNDS" -c "$CLIENTS" --duration "$DURATION"
		--acme-http-addr 127.0.0.1:80 --acme-dns-addr "127.0.0.1:$DNS_PORT"
		--stepca-url "https://127.0.0.1:$PORT" --stepca-root "$WORK/stepca/root_ca.crt"
		--stepca-provisioner "$WORK/stepca/provisioner.json" --stepca-pid "$STEPCA_PID")
	if [ -n "${ACME_REQUEST_LIMIT:-}" ]; then
		args+=(--acme-request-limit "$ACME_REQUEST_LIMIT")
	fi
	if [ -n "$json" ]; then
		args+=(--json-out "$json-acme.json")
	fi
	"$WORK/sigil-bench" "${args[@]}"
done
if [ -z "$acme" ]; then
	say "FAILED: acme side by side needs 127.0.0.1:80 for step-ca's http-01 validation (run as root); sign was compared, acme was not"
	exit 1
fi

#!/usr/bin/env bash
# Installs the system packages that Sigil's tests need, idempotently.
# As root it installs what is missing with apt-get; otherwise it prints the
# exact command to run and exits non-zero, so nothing is skipped silently.
set -euo pipefail

# package -> a file whose presence proves it is installed
declare -A probes=(
  [postgresql]="$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -1 || true)"
  [softhsm2]=/usr/lib/softhsm/libsofthsm2.so
  [opensc]=/usr/bin/pkcs11-tool
  [protobuf-compiler]=/usr/bin/protoc
  # descriptor.proto, which proto/sigil/v1/authz.proto extends (make proto)
  [libprotobuf-dev]=/usr/include/google/protobuf/descriptor.proto
  [certbot]=/usr/bin/certbot
  [openssl]=/usr/bin/openssl
  [openssh-server]=/usr/sbin/sshd
  [openssh-client]=/usr/bin/ssh-keygen
  [zsh]=/usr/bin/zsh
  [fish]=/usr/bin/fish
  # OpenLDAP server and clients for the LDAP auth method tests (internal/slapd)
  [slapd]=/usr/sbin/slapd
  [ldap-utils]=/usr/bin/ldapsearch
)

missing=()
for pkg in "${!probes[@]}"; do
  probe="${probes[$pkg]}"
  if [[ -z "$probe" || ! -e "$probe" ]]; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "deps: all test dependencies present"
  exit 0
fi

IFS=$'\n' sorted=($(sort <<<"${missing[*]}")); unset IFS
cmd="apt-get update && apt-get install -y --no-install-recommends ${sorted[*]}"
if [[ $(id -u) -ne 0 ]]; then
  echo "deps: missing packages: ${sorted[*]}" >&2
  echo "deps: run as root: $cmd" >&2
  exit 1
fi

echo "deps: installing ${sorted[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${sorted[@]}" >/dev/null
echo "deps: installed ${sorted[*]}"

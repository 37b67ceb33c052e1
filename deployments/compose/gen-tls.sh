#!/bin/sh
# Writes a throwaway listener CA and a certificate for the compose nodes
# into ./tls (ca.pem, listener.pem, listener.key). Use your own PKI's
# certificate in production.
set -eu
cd "$(dirname "$0")/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj "/CN=Sigil compose listener CA" -keyout ca.key -out ca.pem
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=sigil" -keyout listener.key -out listener.csr
printf 'subjectAltName=DNS:sigil-1,DNS:sigil-2,DNS:sigil-3,DNS:localhost,IP:127.0.0.1\n' > ext.cnf
openssl x509 -req -in listener.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 -extfile ext.cnf -out listener.pem
rm -f listener.csr ext.cnf ca.srl
# The nodes run as uid 10001 and must read the key through the bind
# mount: this throwaway key is readable by all; keep a real one private
# (owned by 10001, mode 0600).
chmod 0644 ca.pem listener.pem listener.key
rm -f ca.key

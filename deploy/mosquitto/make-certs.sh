#!/usr/bin/env bash
# make-certs.sh OUTDIR [EXTRA_NAME ...]
# A site CA, a broker certificate and client certificates (hashgov, plant, operator),
# all EC P-256, with openssl. The broker certificate's SANs: localhost, 127.0.0.1, ::1,
# this host's name and FQDN, and every EXTRA_NAME (a DNS name or an IP address).
# Idempotent: an existing CA is reused (so clients keep trusting it) and existing
# leaf certificates are kept; delete a file to re-issue it. Private keys are 0600.
set -euo pipefail

usage() { echo "usage: $0 OUTDIR [EXTRA_NAME ...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage ;; esac
out=$1; shift
CA_DAYS=${CA_DAYS:-3650}
LEAF_DAYS=${LEAF_DAYS:-825}
CLIENTS=${CLIENTS:-"hashgov plant operator"}

command -v openssl >/dev/null || { echo "make-certs: openssl not found" >&2; exit 1; }
umask 077
mkdir -p "$out"
cd "$out"

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 0600 "$1"; }

if [ ! -s ca.key ] || [ ! -s ca.crt ]; then
  newkey ca.key
  openssl req -x509 -new -key ca.key -sha256 -days "$CA_DAYS" -out ca.crt \
    -subj "/CN=hashgov site CA $(hostname -s 2>/dev/null || echo site)" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash"
  echo "make-certs: created CA $out/ca.crt" >&2
fi
chmod 0644 ca.crt

# sign NAME EXTFILE: NAME.key + NAME.crt signed by the CA, unless both exist
sign() {
  local name=$1 ext=$2 cn=$3
  if [ -s "$name.key" ] && [ -s "$name.crt" ]; then return 0; fi
  newkey "$name.key"
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -days "$LEAF_DAYS" -sha256 -extfile "$ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr"
  chmod 0644 "$name.crt"
  echo "make-certs: issued $out/$name.crt" >&2
}

ext=$(mktemp)
trap 'rm -f "$ext"' EXIT

is_ip() { [[ $1 =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || $1 == *:* ]]; }
san="DNS:localhost,IP:127.0.0.1,IP:::1"
declare -A seen=([localhost]=1 [127.0.0.1]=1 [::1]=1)
for name in "$(hostname -s 2>/dev/null || true)" "$(hostname -f 2>/dev/null || true)" "$@"; do
  [ -n "$name" ] && [ -z "${seen[$name]:-}" ] || continue
  seen[$name]=1
  if is_ip "$name"; then san+=",IP:$name"; else san+=",DNS:$name"; fi
done
cat > "$ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san
authorityKeyIdentifier=keyid,issuer
EXT
sign broker "$ext" "$(hostname -f 2>/dev/null || echo localhost)"

cat > "$ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
authorityKeyIdentifier=keyid,issuer
EXT
for client in $CLIENTS; do
  sign "$client" "$ext" "$client"
done

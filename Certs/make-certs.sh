#!/usr/bin/env bash
# Makes the development certificates in this folder (openssl from Debian). Not for production.
#   ca.pem / ca-key.pem           development CA (10 years)
#   server.pem / server-key.pem   localhost, 127.0.0.1, ::1 signed by the CA (10 years)
#   wronghost.pem / wronghost-key.pem   signed by the CA for "not-this-host.example" only
#   expired.pem / expired-key.pem       localhost, signed by the CA, expired in 2020
#   other-ca.pem / other-ca-key.pem     an unrelated CA (a client that trusts only it must refuse server.pem)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
days=3650
subj() { echo "/O=gitaly-tap development/CN=$1"; }

openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" -subj "$(subj 'gitaly-tap dev CA')" \
    -keyout ca-key.pem -out ca.pem -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" -subj "$(subj 'unrelated CA')" \
    -keyout other-ca-key.pem -out other-ca.pem -addext "basicConstraints=critical,CA:TRUE" 2>/dev/null

leaf() { # name cn san [extra x509 args...]
    local name="$1" cn="$2" san="$3"; shift 3
    openssl req -newkey rsa:2048 -nodes -sha256 -subj "$(subj "$cn")" -keyout "$name-key.pem" -out "$name.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$san" > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -sha256 -extfile "$name.ext" "$@" \
        -out "$name.pem" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
}
leaf server localhost "DNS:localhost,IP:127.0.0.1,IP:::1" -days "$days"
leaf wronghost not-this-host.example "DNS:not-this-host.example" -days "$days"

# An expired certificate: signed with explicit dates in the past (openssl ca lets us set them).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -newkey rsa:2048 -nodes -sha256 -subj "$(subj localhost)" -keyout expired-key.pem -out "$work/expired.csr" 2>/dev/null
touch "$work/index.txt"
cat > "$work/ca.cnf" <<CNF
[ca]
default_ca = dev
[dev]
database = $work/index.txt
new_certs_dir = $work
serial = $work/serial
default_md = sha256
policy = any
x509_extensions = leaf
[any]
commonName = supplied
[leaf]
subjectAltName = DNS:localhost,IP:127.0.0.1
basicConstraints = CA:FALSE
CNF
echo 1000 > "$work/serial"
openssl ca -batch -config "$work/ca.cnf" -cert ca.pem -keyfile ca-key.pem -in "$work/expired.csr" \
    -startdate 20200101000000Z -enddate 20200201000000Z -out expired.pem -notext 2>/dev/null
rm -f ca.srl
chmod 0644 *.pem
echo "made: $(ls *.pem | tr '\n' ' ')"

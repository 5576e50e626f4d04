#!/usr/bin/env bash
# Make a local stand-in for the `python:3.11-slim` base image where no image
# registry can be reached: a Debian bookworm minbase root filesystem from the
# machine's configured Debian mirror, with Python 3.11, venv, its C headers (the
# Dockerfile compiles the defense's C extensions) and the machine's CA
# certificates, imported with `docker import`.
#
#   bash scripts/make_base_image.sh            # tags python:3.11-slim
#   BASE_IMAGE=my/python:3.11 bash scripts/make_base_image.sh
#
# Idempotent: exits 0 at once when the image already exists locally. Needs root,
# debootstrap and a running Docker engine.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
SUITE=bookworm
PACKAGES="python3 python3-venv python-is-python3 ca-certificates libpython3.11-dev"

log() { printf '[make_base_image] %s\n' "$*" >&2; }

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "$BASE_IMAGE already exists locally: nothing to do"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { log "needs root (debootstrap, chroot)"; exit 1; }
command -v debootstrap >/dev/null || { log "debootstrap missing: apt-get install -y debootstrap"; exit 1; }

# The configured mirror for `suite` (deb822 .sources or one-line .list files): the
# first URI that serves it; Debian's default mirror when none is configured.
_mirror_for() {
    local suite=$1 files
    files=$(ls /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$files" ] || return 0
    # shellcheck disable=SC2086
    awk -v suite="$suite" '
        /^[[:space:]]*deb[[:space:]]/ {
            i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == suite) { print $i; exit }
            next
        }
        /^URIs:/   { uri = $2 }
        /^Suites:/ { for (j = 2; j <= NF; j++) if ($j == suite && uri != "") { print uri; exit } }
        /^[[:space:]]*$/ { uri = "" }
    ' $files
}
MIRROR=$(_mirror_for "$SUITE")
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=$(_mirror_for "$SUITE-security")
SECURITY_MIRROR=${SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}

ROOT=$(mktemp -d /var/tmp/base-rootfs.XXXXXX)
_cleanup() {
    mountpoint -q "$ROOT/proc" && umount "$ROOT/proc"
    rm -rf "$ROOT"
}
trap _cleanup EXIT

started=$(date +%s)
log "debootstrap --variant=minbase $SUITE from $MIRROR"
debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1 \
    || { tail -20 "$ROOT.debootstrap.log" >&2; rm -f "$ROOT.debootstrap.log"; exit 1; }
rm -f "$ROOT.debootstrap.log"

# The same suites as the official image (security and point-release updates), so
# the Dockerfile's `apt-get install` finds packages that match the installed ones.
rm -f "$ROOT/etc/apt/sources.list"
cat >"$ROOT/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

# The machine's extra CA certificates (a TLS-intercepting egress proxy's, say), so
# pip inside the image trusts what pip on the host trusts.
mkdir -p "$ROOT/usr/local/share/ca-certificates"
for cert in /usr/local/share/ca-certificates/*.crt; do
    [ -e "$cert" ] && cp "$cert" "$ROOT/usr/local/share/ca-certificates/"
done

cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mount -t proc proc "$ROOT/proc"
log "installing $PACKAGES"
chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    /bin/sh -ec "
        apt-get update -qq
        apt-get upgrade -y -qq
        apt-get install -y -qq --no-install-recommends $PACKAGES
        update-ca-certificates
        apt-get clean
    " >"$ROOT.install.log" 2>&1 || { tail -20 "$ROOT.install.log" >&2; rm -f "$ROOT.install.log"; exit 1; }
rm -f "$ROOT.install.log"
umount "$ROOT/proc"

# pip's settings: the CA bundle, plus the host's index/proxy settings that can work
# from inside a container (network URLs; local file:// indexes and paths cannot).
python3 - "$ROOT/etc/pip.conf" <<'PY'
import configparser, os, sys

keys = ("index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "default-timeout")
found: dict[str, str] = {}
for path in ("/etc/pip.conf", "/etc/xdg/pip/pip.conf",
             os.path.expanduser("~/.config/pip/pip.conf"), os.path.expanduser("~/.pip/pip.conf")):
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error:
        continue
    for section in ("global", "install"):
        if parser.has_section(section):
            for key in keys:
                if parser.has_option(section, key):
                    found[key] = parser.get(section, key)
for key in keys:
    value = os.environ.get("PIP_" + key.upper().replace("-", "_"))
    if value:
        found[key] = value
if "proxy" not in found:
    proxy = os.environ.get("https_proxy") or os.environ.get("HTTPS_PROXY")
    if proxy:
        found["proxy"] = proxy
for key in ("index-url", "extra-index-url"):
    if key in found:
        urls = [u for u in found[key].split() if u.startswith(("http://", "https://"))]
        if urls:
            found[key] = " ".join(urls)
        else:
            del found[key]
with open(sys.argv[1], "w") as out:
    out.write("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    for key, value in found.items():
        out.write(f"{key} = {value}\n")
PY

rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/*.log \
    "$ROOT"/var/log/apt/* "$ROOT"/tmp/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/*
# Python's static library (about 50 MB) only serves embedding; extensions never link it.
rm -f "$ROOT"/usr/lib/python3.11/config-3.11-*/libpython3.11*.a "$ROOT"/usr/lib/x86_64-linux-gnu/libpython3.11*.a
: >"$ROOT/etc/resolv.conf"

log "importing as $BASE_IMAGE"
tar --numeric-owner -C "$ROOT" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase $SUITE from $MIRROR + $PACKAGES" \
    - "$BASE_IMAGE" >/dev/null
log "made $BASE_IMAGE in $(($(date +%s) - started)) s ($(docker image inspect --format '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%d MB", $1 / 1e6}'))"
